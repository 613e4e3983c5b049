"""One trial: its own folder with the inputs linked in, the injected pipeline run on the trial's params,
the objective read from the folder's metrics, its MLflow child run, and which errors fail only the trial."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna

from diffinject.errors import DiffinjectError
from diffinject.tracking import runs
from diffinject.tracking.registry import RegistryConfig
from diffinject.tracking.runs import MissingMetricError
from diffinject.tracking.search.config import SearchConfig
from diffinject.tracking.search.pruning import ValidationCurve
from diffinject.tracking.search.space import VALUES_ATTR, overlay, suggest
from diffinject.tracking.search.study import WORKER_ATTR
from diffinject.tracking.search.tracker import StudyTracker

TRIALS_DIR = "search"  # mlruns/search/<study>/trial-<n>/
# Exceptions of a trial's pipeline that fail the trial, not the study (bad sampled values, diverging
# training, a full disk). DiffinjectError covers the stages' own checks.
TRIAL_FAILURES: tuple[type[BaseException], ...] = (DiffinjectError, RuntimeError, ValueError, ArithmeticError, OSError)


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
        values = suggest(trial, cfg, setup.model, setup.settings)
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
            metrics_dir = trial_root / runs.METRICS_DIR
            metrics = runs.read_metrics(metrics_dir)
            value = runs.require_metric(metrics, reg.metric, metrics_dir, "registry.metric")
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
