"""The training progress displays every Lightning Trainer of the pipeline shows (build_trainer chooses):
a lighter TQDM bar on a terminal, a line every LOG_INTERVAL_S in a log file. They only draw, so an edit
here re-runs no stage (tests/test_dvc_graph.py exempts this module)."""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf

from diffinject.quiet import LOG_INTERVAL_S


class TrainProgressBar(TQDMProgressBar):
    """Lightning's TQDM progress bar for the training epochs, drawn about three times per epoch instead of
    seven, and without the second bar Lightning opens and closes for every validation pass.

    Lightning's bar draws twice per refresh (position, then metrics), twice at the epoch's start (reset,
    then description) and once more at its end, which on short epochs is a measurable share of a
    training step (benchmarks/classifier_training.py). Here each
    event draws once, and a redraw inside the epoch also waits `min_interval_s` (tqdm's own default for
    its updates), so a short epoch draws at its start, its last batch and its end. The epoch's valid/acc
    still shows on the training bar."""

    def __init__(self, refresh_rate: int = 1, min_interval_s: float = 0.1):
        super().__init__(refresh_rate=refresh_rate)
        self.min_interval_s = min_interval_s
        self._last_draw = float("-inf")

    def on_train_epoch_start(self, trainer: lightning.Trainer, *_: Any) -> None:
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        bar = self.train_progress_bar
        bar.set_description(f"Epoch {trainer.current_epoch}", refresh=False)
        bar.initial = 0
        bar.total = convert_inf(self.total_train_batches)  # None when the loader has no length
        bar.reset()  # draws once
        self._last_draw = time.monotonic()

    def on_train_batch_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        bar, n = self.train_progress_bar, batch_idx + 1
        if bar is None or bar.disable or not self._should_update(n, bar.total):
            return
        now = time.monotonic()
        if n != bar.total and now - self._last_draw < self.min_interval_s:
            return
        bar.n = n
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()
        self._last_draw = now

    def on_validation_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        pass

    def on_validation_batch_start(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_validation_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        pass


class LogLineProgress(lightning.Callback):
    """TrainProgressBar's stand-in when stderr is a log file, not a terminal: the training's progress as
    plain lines, one every `interval_s` and one at the end (build_trainer chooses)."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S):
        self.interval_s = interval_s
        self._last = 0.0

    def on_train_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        self._last = time.monotonic()

    def _line(self, trainer: lightning.Trainer) -> str:
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        steps = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        metrics = " ".join(f"{k} {float(v):.4g}" for k, v in sorted(trainer.progress_bar_metrics.items()))
        epoch = trainer.current_epoch + 1
        if epochs:  # at the end Lightning has already counted the epoch after the last one
            epoch = min(epoch, trainer.max_epochs)
        return f"  epoch {epoch}{epochs}, step {trainer.global_step}{steps} {metrics}".rstrip()

    def on_train_batch_end(self, trainer: lightning.Trainer, *_: Any) -> None:
        if trainer.is_global_zero and time.monotonic() - self._last >= self.interval_s:
            print(self._line(trainer), file=sys.stderr, flush=True)
            self._last = time.monotonic()

    def on_train_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        if trainer.is_global_zero:
            print(self._line(trainer), file=sys.stderr, flush=True)
