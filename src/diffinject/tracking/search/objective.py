"""One trial: its own folder with the inputs linked in, the injected pipeline run on the trial's params,
its validation curve reported to Optuna epoch by epoch (the Lightning callback that stops a trial the
pruner rejects), the objective read from the folder's metrics, its MLflow child run, and which errors
fail only the trial."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import lightning
import optuna

from diffinject.errors import DiffinjectError
from diffinject.tracking.metrics_files import (CURVE_STEP, METRICS_DIR, MissingMetricError, read_curve, read_metrics,
                                               require_metric)
from diffinject.tracking.registry_config import RegistryConfig
from diffinject.tracking.search.config import VALUES_ATTR, Dim, SearchConfig, overlay, suggest
from diffinject.tracking.search.reporting import StudyTracker

TRIALS_DIR = "search"  # mlruns/search/<study>/trial-<n>/
# Exceptions of a trial's pipeline that fail the trial, not the study (bad sampled values, diverging
# training, a full disk). DiffinjectError covers the stages' own checks.
TRIAL_FAILURES: tuple[type[BaseException], ...] = (DiffinjectError, RuntimeError, ValueError, ArithmeticError, OSError)
WORKER_ATTR = "diffinject.worker"  # trial attribute: the index of the worker that ran it


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
        rows = read_curve(curve_csv)
        if not rows or self.column not in rows[0]:
            have = ", ".join(rows[0]) if rows else "no rows"
            raise MissingMetricError(f"{curve_csv}: no column {self.column!r} to prune on (columns: {have})")
        self.log(rows)
        if not self._reported:  # no callback during training: report the whole curve now
            for row in rows:
                self.add(int(row[CURVE_STEP]), row[self.column])
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


class TrialFailed(Exception):
    """A trial's pipeline raised one of TRIAL_FAILURES; Optuna records the trial FAIL and goes on."""


# pipeline(params, trial_root, curve): run the trial's stages in trial_root and call curve.report(csv)
Pipeline = Callable[[dict[str, Any], Path, ValidationCurve], None]


@dataclass
class TrialSetup:
    """What the stage tells the library about its pipeline."""

    pipeline: Pipeline
    required_inputs: tuple[Path, ...]  # linked into every trial folder; missing -> error before the study
    curve_column: str  # the validation-curve column the pruner reads
    optional_inputs: tuple[Path, ...] = ()  # linked when present
    fixed: dict[str, Any] = field(default_factory=dict)  # dotted params every trial sets (not in params.best.yaml)
    model: str = "debiased"  # the model the trials train: `{model}` of the space's keys
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # injection settings to choose from (name -> keys)
    space: list[Dim] | None = None  # the model's own searched keys; None: the DiffInject rows' shared space
    first_trial: dict[str, Any] | None = None  # Optuna params of the study's first trial (enqueued when it has none)
    running_best: bool = True
    missing_hint: str = "run the pipeline first (dvc repro)"


def link_inputs(source: Path, trial_root: Path, setup: TrialSetup) -> None:
    for rel in setup.required_inputs + setup.optional_inputs:
        src = (source / rel).resolve()
        if not src.exists():
            continue
        (trial_root / rel).parent.mkdir(parents=True, exist_ok=True)
        (trial_root / rel).symlink_to(src, target_is_directory=src.is_dir())


def make_objective(params: dict[str, Any], root: Path, setup: TrialSetup, cfg: SearchConfig, reg: RegistryConfig,
                   tracker: StudyTracker, trials_dir: Path, worker: int) -> Callable[[optuna.Trial], float]:
    """The function `study.optimize` calls for each of this worker's trials."""

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, worker)  # a killed worker's re-run finds its trials by it
        values = suggest(trial, cfg, setup.model, setup.settings, setup.space)
        trial.set_user_attr(VALUES_ATTR, values)  # the params keys it set (a setting's name expanded)
        trial_root = trials_dir / f"trial-{trial.number}"
        shutil.rmtree(trial_root, ignore_errors=True)  # a stale folder of an earlier study with this name
        trial_root.mkdir(parents=True)
        link_inputs(root, trial_root, setup)
        run_id = tracker.start_trial(trial.number, values, worker)
        state, error = "FAIL", None
        try:
            curve = ValidationCurve(trial, setup.curve_column, setup.running_best, lambda rows: tracker.log_curve(run_id, rows))
            setup.pipeline(overlay(params, {**values, **setup.fixed}), trial_root, curve)
            metrics_dir = trial_root / METRICS_DIR
            metrics = read_metrics(metrics_dir)
            value = require_metric(metrics, reg.metric, metrics_dir, "registry.metric")
            tracker.log_metrics(run_id, metrics)
            if math.isnan(value):
                error = f"{reg.metric} is NaN"
                raise TrialFailed(f"trial {trial.number}: {error}")
            state = "COMPLETE"
            return value
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except MissingMetricError:
            raise  # not a trial failure: stop the search
        except TRIAL_FAILURES as exc:
            error = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            raise TrialFailed(f"trial {trial.number}: {error}") from exc
        finally:
            if error:
                trial.set_user_attr("error", error)
            tracker.end_trial(run_id, state, error)
            if not cfg.keep_trial_dirs:
                shutil.rmtree(trial_root, ignore_errors=True)

    return objective
