"""The study's outputs once this worker's trials are done: metrics/search.json, params.best.yaml, the
plots, and the same on the study's MLflow run."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import optuna
import yaml

from diffinject.errors import DiffinjectError
from diffinject.fsutil import atomic_file, write_json
from diffinject.tracking.registry import RegistryConfig
from diffinject.tracking.search.config import SearchConfig
from diffinject.tracking.search.plots import save_plots
from diffinject.tracking.search.space import VALUES_ATTR, overlay
from diffinject.tracking.search.tracker import StudyTracker

SEARCH_JSON = Path("metrics/search.json")
BEST_PARAMS = Path("params.best.yaml")
PLOTS = Path("metrics/plots/search")


def _count(study: optuna.Study) -> dict[str, int]:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    T = optuna.trial.TrialState
    return {name.lower(): states.count(state) for name, state in
            (("COMPLETE", T.COMPLETE), ("FAILED", T.FAIL), ("PRUNED", T.PRUNED), ("RUNNING", T.RUNNING))}


def _value(value: Any) -> str:
    """A params value as `dvc exp run -S` takes it (YAML flow style)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def write_best_params(path: Path, params: dict[str, Any], best: dict[str, Any], study_name: str, value: float,
                      metric: str) -> None:
    """params.yaml with the best trial's values, and the `dvc exp run` line that applies them."""
    sets = " ".join(f"-S {shlex.quote(f'{k}={_value(v)}')}" for k, v in best.items())
    header = (f"# Best trial of Optuna study {study_name!r}: {metric} = {value:.4f}.\n"
              f"# Apply it to the pipeline: dvc exp run {sets}\n")
    with atomic_file(path) as tmp:
        tmp.write_text(header + yaml.safe_dump(overlay(params, best), sort_keys=False))


def summarise(study: optuna.Study, params: dict[str, Any], root: Path, cfg: SearchConfig, reg: RegistryConfig,
              tracker: StudyTracker, label: str, worker: int, seconds: float) -> dict[str, Any]:
    """Summarise the whole study (every worker's trials so far), write the outputs, return search.json."""
    counts = _count(study)
    if counts["complete"] == 0:
        raise DiffinjectError(
            f"search: study {cfg.study_name!r} has no complete trial ({counts['failed']} failed, {counts['pruned']} pruned); "
            "the failed trials' errors are in the log above and in their MLflow runs (tag error)"
        )
    best = study.best_trial
    values = best.user_attrs.get(VALUES_ATTR) or dict(best.params)  # a setting's name expanded to its keys
    summary = {
        "study": cfg.study_name, "storage": label, "metric": reg.metric, "direction": reg.direction,
        "best_value": best.value, "best_trial": best.number, "best_params": values,
        "n_trials": counts, "worker": {"index": worker, "seconds": round(seconds, 1)},
    }
    write_json(root / SEARCH_JSON, summary)
    write_best_params(root / BEST_PARAMS, params, values, cfg.study_name, best.value, reg.metric)
    plots = save_plots(study, root / PLOTS, counts["complete"])
    tracker.finish(summary, values, plots)
    print(f"search: best {reg.metric} = {best.value:.4f} (trial {best.number}) with "
          + ", ".join(f"{k}={_value(v)}" for k, v in values.items())
          + f"; trials {counts}; {seconds:.0f} s -> {root / SEARCH_JSON}, {root / BEST_PARAMS}")
    return summary
