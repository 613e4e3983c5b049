"""Training and inference entry points the stages call: typed configs of the `trainer`, `biased`,
`vanilla`, `debiased` and `lff` params sections, a Lightning Trainer built from `trainer.*`, and
`train_classifier` / `predict_logits` (LfF's config and training: models/lff.py).

Repeatability: `seed_everything(seed)` before the networks are built, a shuffling generator seeded by
`seed`, and `trainer.deterministic` (default true) give the same metrics for the same params on the same
machine. The epoch kept is chosen on the validation split only (`select`).
"""

from __future__ import annotations

import contextlib
import time
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

import lightning
import torch
from lightning.fabric.connector import _PRECISION_INPUT
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy, StrategyRegistry
from lightning.pytorch.trainer.states import TrainerStatus
from torch import nn

from diffinject.config import check_at_least
from diffinject.data.tensors import ImageDataModule, ImageTensors, make_loader
from diffinject.devices import inference_device, skip_failing_nvml_probe
from diffinject.errors import DiffinjectError, first_line
from diffinject.models.classifier import SELECT_MODES, ClassifierModule, EpochSelector, LogLineProgress, TrainProgressBar
from diffinject.models.losses import DEFAULT_GCE_Q
from diffinject.models.networks import NetConfig, build_network, load_imagenet_weights
from diffinject.quiet import quiet_lightning, stderr_is_terminal

# Lightning warns that num_workers=0 may bottleneck; our data is decoded in memory and workers would
# only add inter-process copies (benchmarks/classifier_training.py measures it).
SYNTHETIC_POOL = "data/synthetic/manifest.parquet"  # the inject stage's pool: debiased.pool's default
_WORKER_WARNING = r".*does not have many workers.*"


class NoOpProfiler(PassThroughProfiler):
    """Lightning's default profiler (none), minus its cost. Lightning enters `profiler.profile(...)`
    around every hook, batch fetch and optimizer step, ~50 times per training step, and
    PassThroughProfiler's is a generator-based context manager: ~1 µs each, ~1.3 % of an MLP step on
    the CPU (benchmarks/classifier_training.py). This one hands back one shared no-op context."""

    _NOTHING = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:  # type: ignore[override]
        return self._NOTHING


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


@dataclass
class OptimConfig:
    """Keys every classifier-training section shares."""

    model: Literal["mlp", "resnet18"] = "mlp"
    pretrained: str | None = None  # resnet18 only: a local torchvision ImageNet state_dict (.pth)
    lr: float = 1e-3  # Adam
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 50
    select: Literal["best", "last"] = "best"  # epoch kept: best validation accuracy, or the last one

    def check(self, section: str) -> None:
        check_at_least(self, section, 0, "lr", strict=True)
        check_at_least(self, section, 0, "weight_decay")
        check_at_least(self, section, 1, "batch_size", "epochs")
        if self.select not in SELECT_MODES:
            raise DiffinjectError(f"params '{section}.select': got {self.select!r}, expected one of {', '.join(SELECT_MODES)}")
        if self.pretrained is not None and self.model != "resnet18":
            raise DiffinjectError(f"params '{section}.pretrained': ImageNet weights are for resnet18, but {section}.model is {self.model!r}")


@dataclass
class TrainConfig(OptimConfig):
    """`vanilla.*` (and the base of the other one-network sections): one network, one loss."""

    loss: Literal["ce", "gce"] = "ce"
    gce_q: float = DEFAULT_GCE_Q

    def check(self, section: str) -> None:
        super().check(section)
        if not 0 < self.gce_q <= 1:
            raise DiffinjectError(f"params '{section}.gce_q': got {self.gce_q}, expected 0 < q <= 1")


@dataclass
class BiasedConfig(TrainConfig):
    """`biased.*`: the GCE model that mining reads (DiffInject CMNIST: Adam 1e-3, batch 256). It is
    meant to be biased, so the last epoch is kept, not the best on valid."""

    loss: Literal["ce", "gce"] = "gce"
    epochs: int = 10
    select: Literal["best", "last"] = "last"


@dataclass
class JudgeConfig(TrainConfig):
    """`judge.*`: the colour-blind judge of the synthetic quality report (grey-scale images)."""

    epochs: int = 20


@dataclass
class DebiasedConfig(TrainConfig):
    """`debiased.*`: the original train split plus `bias_conflict_ratio` × |train| pool samples."""

    loss: Literal["ce", "gce"] = "gce"  # the released DiffInject's retraining; 3 seeds: valid 0.743 gce vs 0.732 ce
    # a manifest of extra images (.parquet/.csv: id, path, target; default: the inject stage's); null = none
    pool: str | None = SYNTHETIC_POOL
    bias_conflict_ratio: float = 0.5  # pool samples added, as a fraction of |train| (0.1 / 0.3 / 0.5: valid 0.65 / 0.72 / 0.75)

    def check(self, section: str) -> None:
        super().check(section)
        check_ratio(self.bias_conflict_ratio, section)


def check_ratio(ratio: float | None, section: str) -> None:
    if ratio is not None and ratio < 0:
        raise DiffinjectError(f"params '{section}.bias_conflict_ratio': got {ratio}, expected >= 0 (a fraction of |train|)")


def ratio_or_debiased(ratio: float | None, debiased: DebiasedConfig) -> float:
    """A section's `bias_conflict_ratio`, null meaning debiased.bias_conflict_ratio (upsample, debiased_lff:
    so that at one setting they add as many images as train_debiased)."""
    return debiased.bias_conflict_ratio if ratio is None else ratio


@dataclass
class UpsampleConfig(TrainConfig):
    """`upsample.*`: the train split plus copies of the mined conflicts (JTT), plain CE by default."""

    bias_conflict_ratio: float | None = None  # null: debiased.bias_conflict_ratio (same count as the pool's)

    def check(self, section: str) -> None:
        super().check(section)
        check_ratio(self.bias_conflict_ratio, section)


@dataclass
class FitResult:
    """What a training run hands back to its stage."""

    state: dict[str, torch.Tensor]  # weights of the selected epoch, on CPU
    net_config: NetConfig
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    seconds: float = 0.0
    is_global_zero: bool = True  # only rank zero writes outputs under DDP

    @property
    def selected(self) -> dict[str, float]:
        return self.history[self.best_epoch - 1]


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
def _quiet_worker_warning() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_WORKER_WARNING)
        yield


def build_net(cfg: OptimConfig, num_classes: int, image_shape: tuple[int, int, int], section: str) -> tuple[nn.Module, NetConfig]:
    net_cfg = NetConfig(arch=cfg.model, num_classes=num_classes, image_shape=tuple(image_shape))
    net = build_network(net_cfg)
    if cfg.pretrained is not None:
        load_imagenet_weights(net, cfg.pretrained, f"{section}.pretrained")
    return net, net_cfg


def check_data(train: ImageTensors, valid: ImageTensors) -> None:
    for data in (train, valid):
        if len(data) == 0:
            raise DiffinjectError(f"{data.source}: no images (expected at least one)")
    if train.shape != valid.shape:
        raise DiffinjectError(f"{valid.source}: images are {valid.shape} (C, H, W), expected {train.shape} like {train.source}")


def fit(module: ClassifierModule, net_cfg: NetConfig, train: ImageTensors, valid: ImageTensors,
        cfg: OptimConfig, trainer_cfg: TrainerConfig, seed: int,
        callbacks: list[lightning.Callback] | None = None) -> FitResult:
    """Train `module` for cfg.epochs (or until a callback stops it), validating every epoch, and return
    the selected epoch's weights."""
    selector = module.selector = EpochSelector(cfg.select)
    trainer = build_trainer(trainer_cfg, cfg.epochs, callbacks)
    data = ImageDataModule(train, valid, cfg.batch_size, seed)
    start = time.perf_counter()
    with _quiet_worker_warning():
        trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - start
    if trainer.state.status != TrainerStatus.FINISHED or selector.state is None or selector.best_epoch is None:
        raise DiffinjectError(f"training stopped before the end ({trainer.state.status.value}); nothing written")
    return FitResult(
        state=selector.state, net_config=net_cfg, best_epoch=selector.best_epoch, history=selector.history,
        seconds=seconds, is_global_zero=trainer.is_global_zero,
    )


def train_classifier(train: ImageTensors, valid: ImageTensors, num_classes: int, cfg: TrainConfig,
                     trainer_cfg: TrainerConfig, seed: int, section: str,
                     callbacks: list[lightning.Callback] | None = None) -> FitResult:
    """One network with loss cfg.loss (ce | gce); `section` names the params section in messages."""
    cfg.check(section)
    check_data(train, valid)
    lightning.seed_everything(seed, workers=True, verbose=False)
    net, net_cfg = build_net(cfg, num_classes, train.shape, section)
    module = ClassifierModule(net, loss=cfg.loss, gce_q=cfg.gce_q, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return fit(module, net_cfg, train, valid, cfg, trainer_cfg, seed, callbacks)


def predict_logits(net: nn.Module, data: ImageTensors, batch_size: int, trainer_cfg: TrainerConfig) -> torch.Tensor:
    """Logits (N, num_classes) of `net` on every image of `data`, in order, as float32 on the CPU."""
    if len(data) == 0:
        raise DiffinjectError(f"{data.source}: no images to predict (expected at least one)")
    trainer = build_trainer(trainer_cfg, inference=True)
    with _quiet_worker_warning():
        batches = trainer.predict(ClassifierModule(net), make_loader(data, batch_size, shuffle=False))
    return torch.cat([b.cpu() for b in batches])
