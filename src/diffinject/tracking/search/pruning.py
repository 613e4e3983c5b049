"""Pruning: a trial's validation curve reported to Optuna epoch by epoch, the Lightning callback that
stops a rejected trial's training, and the pruner `search.pruner` names."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import lightning
import optuna

from diffinject.tracking import runs
from diffinject.tracking.runs import MissingMetricError
from diffinject.tracking.search.config import SearchConfig


class ValidationCurve:
    """Reports a trial's validation curve to Optuna and MLflow and prunes the trial when the pruner finds
    it hopeless. During training, `lightning_callback` reports each epoch as it ends and stops the
    training at the first epoch the pruner rejects; `report(csv)` then logs the curve the training wrote
    and raises TrialPruned (a pipeline without the callback gets its whole curve reported there). With
    `running_best`, epoch e reports the best value up to e (the epoch a `select: best` training keeps),
    so a late dip does not prune a good trial."""

    def __init__(self, trial: optuna.Trial, column: str, running_best: bool, log: Callable[[list[dict[str, float]]], None]):
        self.trial, self.column, self.running_best, self.log = trial, column, running_best, log
        self.maximize = trial.study.direction == optuna.study.StudyDirection.MAXIMIZE
        self._best: float | None = None
        self._reported: set[int] = set()
        self.pruned_reason: str | None = None

    def add(self, epoch: int, value: float) -> bool:
        """Report one epoch's value; True when the trial should stop (the pruner rejected it)."""
        if self.running_best and self._best is not None:
            value = max(self._best, value) if self.maximize else min(self._best, value)
        self._best = value
        if epoch not in self._reported:
            self.trial.report(value, epoch)
            self._reported.add(epoch)
        if self.pruned_reason is None and self.trial.should_prune():
            self.pruned_reason = f"{self.column} {value:.4f} at epoch {epoch} is below the pruner's threshold"
        return self.pruned_reason is not None

    def lightning_callback(self, monitor: str) -> lightning.Callback:
        """A callback reporting the logged metric `monitor` after every validation epoch."""
        return PruneDuringTraining(self, monitor)

    def report(self, curve_csv: Path) -> None:
        if not curve_csv.is_file():
            raise MissingMetricError(f"{curve_csv}: validation curve not written by the trial's training")
        rows = runs.read_curve(curve_csv)
        if not rows or self.column not in rows[0]:
            have = ", ".join(rows[0]) if rows else "no rows"
            raise MissingMetricError(f"{curve_csv}: no column {self.column!r} to prune on (columns: {have})")
        self.log(rows)
        if not self._reported:  # no callback during training: report the whole curve now
            for row in rows:
                self.add(int(row[runs.CURVE_STEP]), row[self.column])
        if self.pruned_reason is not None:
            raise optuna.TrialPruned(self.pruned_reason)


class PruneDuringTraining(lightning.Callback):
    """Stops a trial's training at the first epoch the pruner rejects, so a hopeless trial costs only the
    epochs it took to see that. Rank zero talks to Optuna; the decision is broadcast to every rank."""

    def __init__(self, curve: ValidationCurve, monitor: str):
        self.curve, self.monitor = curve, monitor

    # on_validation_end, like Lightning's EarlyStopping: it runs after the module's on_validation_epoch_end
    # has logged the epoch's metric (callbacks' on_validation_epoch_end run before the module's).
    def on_validation_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        stop = False
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.monitor)
            if value is None:
                have = ", ".join(sorted(trainer.callback_metrics)) or "none"
                raise MissingMetricError(f"validation metric {self.monitor!r} not logged by the training (logged: {have})")
            stop = self.curve.add(trainer.current_epoch + 1, float(value))
        if trainer.strategy.broadcast(stop):
            trainer.should_stop = True


def make_pruner(cfg: SearchConfig) -> optuna.pruners.BasePruner:
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner_startup_trials, n_warmup_steps=cfg.pruner_warmup_epochs)
    return optuna.pruners.NopPruner()
