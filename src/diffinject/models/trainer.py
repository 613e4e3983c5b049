"""The Lightning Trainer every training and inference run is built with: `trainer.*` (TrainerConfig) and
`build_trainer`. It knows no classifier, loss or dataset, so the DDPM stage depends on nothing else of
models/."""

from __future__ import annotations

import contextlib
import typing
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import lightning
import torch
from lightning.fabric.connector import _PRECISION_INPUT
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy, StrategyRegistry

from diffinject.devices import inference_device, skip_failing_nvml_probe
from diffinject.errors import DiffinjectError, first_line
from diffinject.progress import LogLineProgress, TrainProgressBar
from diffinject.quiet import quiet_lightning, stderr_is_terminal

# Lightning warns that num_workers=0 may bottleneck; our data is decoded in memory and workers would
# only add inter-process copies (benchmarks/classifier_training.py measures it).
_WORKER_WARNING = r".*does not have many workers.*"


class NoOpProfiler(PassThroughProfiler):
    """Lightning's default profiler (none), minus its cost. Lightning enters `profiler.profile(...)`
    around every hook, batch fetch and optimizer step, dozens of times per training step, and
    PassThroughProfiler's is a generator-based context manager built anew each time. This one hands
    back one shared no-op context."""

    _NOTHING = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:  # type: ignore[override]
        return self._NOTHING


class FlushDenormals(lightning.Callback):
    """Subnormal floats flushed to zero while `fit` runs, and flushing turned off again after it: the
    flag is process-wide, and left on it would reach code that is not training (with it on, a
    multi-threaded LAPACK solve of the probes' ridge regression never returned)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        torch.set_flush_denormal(True)

    def on_fit_end(self, trainer, pl_module) -> None:
        torch.set_flush_denormal(False)

    def on_exception(self, trainer, pl_module, exception) -> None:
        torch.set_flush_denormal(False)


@dataclass
class TrainerConfig:
    """`trainer.*`: passed through to `lightning.Trainer` by every training stage."""

    accelerator: str = "auto"  # auto | cpu | gpu | mps | ...
    devices: int | str | list[int] = 1  # number or list of devices, or "auto"
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ...
    precision: str | int = "32-true"  # 32-true | 16-mixed | bf16-mixed | ...
    num_nodes: int = 1
    deterministic: bool = True  # torch deterministic algorithms: same params -> same metrics
    enable_progress_bar: bool = True
    progress_bar_refresh_rate: int = 10  # batches between progress bar redraws (and at most 10 per second)
    # Subnormal floats (|x| < 1.2e-38) are flushed to zero on the CPU while a trainer runs: long runs drive
    # per-sample losses, EMAs and probabilities into that range, where x86 arithmetic is many times slower
    # (docs/benchmarks.md, "Every stage's cost at 4,000 and 53,330 train images").
    flush_denormals: bool = True

    def check(self) -> None:
        # Lightning's own registries, so a name it accepts is accepted here and nothing else reaches it
        # (its ValueError / MisconfigurationException would be a traceback).
        accelerators = ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))
        if self.accelerator not in accelerators:
            raise DiffinjectError(f"params 'trainer.accelerator': got {self.accelerator!r}, expected one of {', '.join(accelerators)}")
        strategies = ("auto", *StrategyRegistry.available_strategies())
        if self.strategy not in strategies:
            raise DiffinjectError(f"params 'trainer.strategy': got {self.strategy!r}, expected one of "
                                  f"{', '.join(s for s in strategies if '_find_unused' not in s)}")
        precisions = [v for arg in typing.get_args(_PRECISION_INPUT) for v in typing.get_args(arg)]
        if self.precision not in precisions:
            raise DiffinjectError(f"params 'trainer.precision': got {self.precision!r}, expected one of "
                                  f"{', '.join(str(v) for v in precisions if isinstance(v, str) and '-' in v)}")
        if not _valid_devices(self.devices):
            raise DiffinjectError(f"params 'trainer.devices': got {self.devices!r}, expected a count >= 1, -1 (all), "
                                  "\"auto\" or a non-empty list of device indices")
        if self.num_nodes < 1:
            raise DiffinjectError(f"params 'trainer.num_nodes': got {self.num_nodes}, expected >= 1")
        if self.progress_bar_refresh_rate < 1:
            raise DiffinjectError(
                f"params 'trainer.progress_bar_refresh_rate': got {self.progress_bar_refresh_rate}, expected >= 1 "
                "(set trainer.enable_progress_bar: false to hide the bar)"
            )


def _valid_devices(devices: Any) -> bool:
    if isinstance(devices, bool):
        return False
    if isinstance(devices, int):
        return devices >= 1 or devices == -1
    if isinstance(devices, str):
        parts = devices.split(",")
        return devices in ("auto", "-1") or all(p.strip().isdigit() for p in parts if p.strip()) and any(p.strip() for p in parts)
    return bool(devices) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices)


def build_trainer(cfg: TrainerConfig, max_epochs: int = 1, callbacks: list[lightning.Callback] | None = None,
                  inference: bool = False, precision: str | int | None = None, **trainer_kwargs: Any) -> lightning.Trainer:
    """A Trainer from `trainer.*`. Inference (mining, evaluation) runs on one device of the same
    accelerator: the sets are small and per-sample outputs then need no gathering. `precision`
    overrides trainer.precision (the DDPM has its own); `trainer_kwargs` go to lightning.Trainer.
    The progress bar is a bar on a terminal and a line every LOG_INTERVAL_S in a log file."""
    cfg.check()
    skip_failing_nvml_probe()
    quiet_lightning()
    callbacks = list(callbacks or [])
    if cfg.flush_denormals and not inference:
        callbacks.append(FlushDenormals())
    bar = cfg.enable_progress_bar and not inference and stderr_is_terminal()
    if bar:
        callbacks.append(TrainProgressBar(refresh_rate=cfg.progress_bar_refresh_rate))
    elif cfg.enable_progress_bar and not inference:
        callbacks.append(LogLineProgress())
    try:
        return _trainer(cfg, max_epochs, callbacks, inference, precision, bar, trainer_kwargs)
    except (ValueError, MisconfigurationException) as exc:
        # what the checks above cannot know: e.g. a GPU asked for on a machine without one
        raise DiffinjectError(f"params 'trainer': {first_line(exc)}") from exc


def _trainer(cfg: TrainerConfig, max_epochs: int, callbacks: list[lightning.Callback], inference: bool,
             precision: str | int | None, bar: bool, trainer_kwargs: dict[str, Any]) -> lightning.Trainer:
    return lightning.Trainer(
        accelerator=cfg.accelerator,
        devices=1 if inference else cfg.devices,
        # inference: one device in this process, even under torchrun (Lightning would otherwise read
        # WORLD_SIZE from the environment and wait for the other ranks to join a DDP group)
        strategy=SingleDeviceStrategy(inference_device(cfg.accelerator)) if inference else cfg.strategy,
        num_nodes=1 if inference else cfg.num_nodes,
        precision=cfg.precision if precision is None else precision,
        deterministic=cfg.deterministic,
        max_epochs=max_epochs,
        callbacks=callbacks,
        enable_progress_bar=bar,
        logger=False,  # stages write their own metrics and plots; MLflow logging is the register stage's
        # The chosen epoch is kept in memory (EpochSelector) and written once, at the end; Lightning's
        # checkpointing only runs for a Checkpoint callback a caller passes.
        enable_checkpointing=any(isinstance(cb, Checkpoint) for cb in callbacks),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        profiler=NoOpProfiler(),
        **trainer_kwargs,
    )


@contextlib.contextmanager
def quiet_worker_warning() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_WORKER_WARNING)
        yield


