"""Joining the study and running this worker's part of it.

The storage: an Optuna RDB storage (SQLite waits on a locked file, heartbeats on) and its URL as it may
be logged. Joining: create or load the study in the storage, refuse one that optimises another metric,
and give this worker its index — a new one, or that of a worker of this host whose process vanished
before it ended (killed, or stopped by an error), whose trial left RUNNING goes back to WAITING (same
number, same params) so this worker runs it again. The pruner is the one `search.pruner` names.

Trial n draws its values from a sampler seeded `seed + n` (`PerTrialSeed`), not from one RNG per
process: a trial's values depend on its number and the study's history only, so workers never draw the
same start-up values and a resumed worker draws what the killed one would have.

`run_search`: one worker's whole search, from checking its params to summarising the study."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from diffinject.config import section, seed_of
from diffinject.errors import DiffinjectError, first_line
from diffinject.tracking import store
from diffinject.tracking.registry_config import RegistryConfig
from diffinject.tracking.runs import setup_experiment
from diffinject.tracking.search.config import SECTION, SearchConfig
from diffinject.tracking.search.objective import TRIALS_DIR, WORKER_ATTR, TrialFailed, TrialSetup, make_objective
from diffinject.tracking.search.reporting import StudyTracker, summarise
from diffinject.tracking.stale_runs import owner_gone, owner_tags

HEARTBEAT_INTERVAL_S = 60  # a running trial's heartbeat; one silent for GRACE_PERIOD_S is marked FAIL
GRACE_PERIOD_S = 180
WORKERS_ATTR = "diffinject.workers"  # study attribute: how many workers have joined
METRIC_ATTR = "diffinject.metric"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def storage_label(url: str) -> str:
    """The storage URL without its password (it is logged as a tag, and named in errors)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError as exc:
        raise DiffinjectError(f"params 'search.storage' (or --storage): {url!r} is not a database URL "
                              "(expected e.g. sqlite:////abs/path.db or postgresql://user@host/db)") from exc


def open_storage(url: str) -> optuna.storages.RDBStorage:
    store.ensure_sqlite_dir(url)
    # SQLite: wait on a file another worker holds locked instead of failing at once
    engine_kwargs = {"connect_args": {"timeout": store.SQLITE_TIMEOUT_S}} if store.sqlite_path(url) else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_INTERVAL_S,
                                              grace_period=GRACE_PERIOD_S)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        # an unknown dialect, a missing driver, a server that refuses: SQLAlchemy's own multi-line error, in
        # one line and without the URL's password (the label hides it)
        reason = first_line(exc)
        raise DiffinjectError(f"{storage_label(url)}: cannot open the Optuna storage ({reason.replace(url, storage_label(url))})") from exc


def worker_attr(index: int) -> str:
    """Study attribute of worker `index`: its process (stale_runs.owner_tags) and whether it ended."""
    return f"diffinject.worker.{index}"


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise DiffinjectError(f"params '{SECTION}.sampler': got {kind!r}, expected tpe or random")


class PerTrialSeed(optuna.samplers.BaseSampler):
    """`kind`'s sampler, a fresh one seeded `seed + trial.number` for each trial. TPE and random keep no
    state but their RNG (the history is the study's), so this changes only where the randomness comes from."""

    def __init__(self, kind: str, seed: int):
        make_sampler(kind, seed)  # checks `kind`
        self.kind, self.seed = kind, seed
        self._samplers: dict[int, optuna.samplers.BaseSampler] = {}

    def _of(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        if trial.number not in self._samplers:
            self._samplers[trial.number] = make_sampler(self.kind, self.seed + trial.number)
        return self._samplers[trial.number]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._of(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._of(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any) -> Any:
        return self._of(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._of(trial).before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        sampler = self._of(trial)
        del self._samplers[trial.number]
        sampler.after_trial(study, trial, state, values)


@dataclass
class Worker:
    """This process's place in the study."""

    index: int
    finished: int  # trials this index had already finished (a resumed worker's; 0 for a new one)
    requeued: list[int]  # numbers of its trials that a killed process left RUNNING, now WAITING


def join_study(cfg: SearchConfig, url: str, reg: RegistryConfig, seed: int, root: Path) -> tuple[optuna.Study, Worker]:
    """Open the storage (creating its schema), create or load the study, check it optimises the same
    metric in the same direction, and take a worker index: all under the store lock, so two workers
    started at once do not both create the schema, nor take the same index."""
    with store.store_lock(root):
        storage = open_storage(url)
        study = optuna.create_study(storage=storage, study_name=cfg.study_name, direction=reg.direction,
                                    load_if_exists=True)
        wanted = optuna.study.StudyDirection.MAXIMIZE if reg.direction == "maximize" else optuna.study.StudyDirection.MINIMIZE
        metric = study.user_attrs.get(METRIC_ATTR, reg.metric)
        if study.direction != wanted or metric != reg.metric:
            raise DiffinjectError(
                f"params '{SECTION}.study_name': study {cfg.study_name!r} already optimises {metric} "
                f"({study.direction.name.lower()}), not {reg.metric} ({reg.direction}); choose another study name"
            )
        worker = _resume_killed_worker(study, storage) or _new_worker(study)
        study.set_user_attr(worker_attr(worker.index), {**owner_tags(), "ended": False})
        study.set_user_attr(METRIC_ATTR, reg.metric)
    study = optuna.load_study(study_name=cfg.study_name, storage=storage,
                              sampler=PerTrialSeed(cfg.sampler, seed), pruner=make_pruner(cfg))
    return study, worker


def _new_worker(study: optuna.Study) -> Worker:
    index = int(study.user_attrs.get(WORKERS_ATTR, 0))
    study.set_user_attr(WORKERS_ATTR, index + 1)
    return Worker(index, 0, [])


def _resume_killed_worker(study: optuna.Study, storage: optuna.storages.BaseStorage) -> Worker | None:
    """The lowest index whose process ran on this host and vanished before it ended (SIGKILL, power cut, error):
    its RUNNING trials go back to WAITING, which Optuna gives the next trial this process asks for."""
    attrs = study.user_attrs
    for index in range(int(attrs.get(WORKERS_ATTR, 0))):
        owner = attrs.get(worker_attr(index))
        if not owner or owner.get("ended") or not owner_gone(owner):
            continue
        trials = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(WORKER_ATTR) == index]
        requeued = [t.number for t in trials if t.state == TrialState.RUNNING]
        study_id = storage.get_study_id_from_name(study.study_name)
        for number in requeued:
            storage.set_trial_state_values(storage.get_trial_id_from_study_id_trial_number(study_id, number),
                                           TrialState.WAITING)
        return Worker(index, sum(t.state in FINISHED for t in trials), requeued)
    return None


def end_worker(study: optuna.Study, worker: Worker) -> None:
    """Record that this worker ended by itself (so no later process resumes it)."""
    study.set_user_attr(worker_attr(worker.index), {**owner_tags(), "ended": True})


def make_pruner(cfg: SearchConfig) -> optuna.pruners.BasePruner:
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner_startup_trials, n_warmup_steps=cfg.pruner_warmup_epochs)
    return optuna.pruners.NopPruner()


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
    tracker = StudyTracker(setup_experiment(reg.experiment, root), cfg.study_name, label, root)
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
