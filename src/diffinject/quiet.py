"""What reaches the terminal: Lightning notices a user of this pipeline cannot act on are kept out,
and progress written to a log file (not a terminal) comes as a line every LOG_INTERVAL_S instead of a
bar redrawn on every tick (a 1000-step bar wrote ~1000 updates into `dvc repro`'s log)."""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from typing import Any

import lightning

# Seconds between progress lines in a log file; a terminal keeps tqdm's live bar.
LOG_INTERVAL_S = 30.0

# Lightning's rank-zero logger: the module records under its own name, or under pytorch_lightning's
# when that standalone package is imported too (optuna-integration does), so both are filtered.
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero")


class _DropAdvert(logging.Filter):
    """Lightning prints a "Tip" advertising its cloud logger at every Trainer construction."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


_FILTER = _DropAdvert()


def quiet_lightning() -> None:
    """Drop Lightning's per-Trainer cloud-logger advert and the torch deprecation its pytree copy
    triggers on every fit (Lightning's code, not ours, uses the deprecated LeafSpec). Idempotent."""
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def throttle_progress_in_logs() -> None:
    """Every tqdm bar (ours, diffusers') redraws at most every LOG_INTERVAL_S when stderr is a file or
    a pipe; a TQDM_MININTERVAL the user set wins. Call once, before any bar opens."""
    if not stderr_is_terminal():
        os.environ.setdefault("TQDM_MININTERVAL", str(LOG_INTERVAL_S))


class LogLineProgress(lightning.Callback):
    """A training's progress as plain lines for a log: one every `interval_s`, and one at the end."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S):
        self.interval_s = interval_s
        self._last = 0.0

    def on_train_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        self._last = time.monotonic()

    def _line(self, trainer: lightning.Trainer) -> str:
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        steps = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        metrics = " ".join(f"{k} {float(v):.4g}" for k, v in sorted(trainer.progress_bar_metrics.items()))
        return f"  epoch {trainer.current_epoch + 1}{epochs}, step {trainer.global_step}{steps} {metrics}".rstrip()

    def on_train_batch_end(self, trainer: lightning.Trainer, *_: Any) -> None:
        if trainer.is_global_zero and time.monotonic() - self._last >= self.interval_s:
            print(self._line(trainer), file=sys.stderr, flush=True)
            self._last = time.monotonic()

    def on_train_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        if trainer.is_global_zero:
            print(self._line(trainer), file=sys.stderr, flush=True)
