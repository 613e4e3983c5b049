"""Joining the study: create or load it in the storage, refuse one that optimises another metric, and
give this worker its index — a new one, or that of a worker of this host whose process vanished before
it ended (killed, or stopped by an error), whose trial left RUNNING goes back to WAITING (same number,
same params) so this worker runs it again.

Trial n draws its values from a sampler seeded `seed + n` (`PerTrialSeed`), not from one RNG per
process: a trial's values depend on its number and the study's history only, so workers never draw the
same start-up values and a resumed worker draws what the killed one would have."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from diffinject.errors import DiffinjectError
from diffinject.tracking import runs, store
from diffinject.tracking.registry import RegistryConfig
from diffinject.tracking.search.config import SECTION, SearchConfig
from diffinject.tracking.search.pruning import make_pruner
from diffinject.tracking.search.storage import open_storage

WORKERS_ATTR = "diffinject.workers"  # study attribute: how many workers have joined
METRIC_ATTR = "diffinject.metric"
WORKER_ATTR = "diffinject.worker"  # trial attribute: the index of the worker that ran it
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def worker_attr(index: int) -> str:
    """Study attribute of worker `index`: its process (runs.owner_tags) and whether it ended."""
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
        study.set_user_attr(worker_attr(worker.index), {**runs.owner_tags(), "ended": False})
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
        if not owner or owner.get("ended") or not runs.owner_gone(owner):
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
    study.set_user_attr(worker_attr(worker.index), {**runs.owner_tags(), "ended": True})
