"""`run_search`: one worker's whole search, from checking its params to summarising the study."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from diffinject.config import section, seed_of
from diffinject.errors import DiffinjectError
from diffinject.tracking import runs, store
from diffinject.tracking.registry import RegistryConfig
from diffinject.tracking.search.config import SECTION, SearchConfig
from diffinject.tracking.search.objective import TRIALS_DIR, TrialFailed, TrialSetup, make_objective
from diffinject.tracking.search.storage import storage_label
from diffinject.tracking.search.study import end_worker, join_study
from diffinject.tracking.search.summary import summarise
from diffinject.tracking.search.tracker import StudyTracker


def run_search(params: dict[str, Any], root: Path, setup: TrialSetup, *, n_trials: int | None = None,
               storage: str | None = None) -> dict[str, Any]:
    """Run this worker's trials, then summarise the whole study (package docstring). Returns search.json."""
    cfg = section(params, SECTION, SearchConfig)
    if n_trials is not None:
        cfg.n_trials = n_trials
    if storage is not None:
        cfg.storage = storage
    cfg.check()
    reg = section(params, "registry", RegistryConfig)
    reg.check()
    root = Path(root)
    # before the study: a missing input would otherwise fail every trial, one by one
    missing = [str(root / rel) for rel in setup.required_inputs if not (root / rel).exists()]
    if missing:
        raise DiffinjectError(f"{missing[0]}: search input not found ({setup.missing_hint})")
    seed = cfg.seed if cfg.seed is not None else seed_of(params)
    url = store.optuna_storage_url(cfg.storage, root)
    label = storage_label(url)
    study, worker = join_study(cfg, url, reg, seed, root)
    # a killed worker's re-run goes on where it stopped (its trial cut short first), to n_trials in all
    left = max(0, cfg.n_trials - worker.finished)
    tracker = StudyTracker(runs.setup_experiment(reg.experiment, root), cfg.study_name, label, root)
    tracker.describe(cfg, reg)
    trials_dir = store.store_dir(root) / TRIALS_DIR / cfg.study_name
    resumed = (f", resuming a killed worker: {worker.finished} finished, trial(s) {worker.requeued} cut short and run again"
               if worker.finished or worker.requeued else "")
    print(f"search: study {cfg.study_name!r} on {label}, worker {worker.index}{resumed} (sampler {cfg.sampler}, "
          f"trial n seeded {seed} + n), {left} trial(s), objective {reg.metric} ({reg.direction})")
    objective = make_objective(params, root, setup, cfg, reg, tracker, trials_dir, worker.index)
    start = time.perf_counter()
    if setup.first_trial is not None and not study.trials:
        study.enqueue_trial(setup.first_trial)  # e.g. the pilot's choice: the search starts from it
    if left:
        study.optimize(objective, n_trials=left, catch=(TrialFailed,))
    seconds = time.perf_counter() - start
    end_worker(study, worker)
    return summarise(study, params, root, cfg, reg, tracker, label, worker.index, seconds)
