"""Joining the study: create or load it in the storage, refuse one that optimises another metric, and
give this worker its index and its own sampler seed."""

from __future__ import annotations

from pathlib import Path

import optuna

from diffinject.errors import DiffinjectError
from diffinject.tracking import store
from diffinject.tracking.registry import RegistryConfig
from diffinject.tracking.search.config import SECTION, SearchConfig
from diffinject.tracking.search.pruning import make_pruner
from diffinject.tracking.search.storage import open_storage

WORKERS_ATTR = "diffinject.workers"  # study attribute: how many workers have joined
METRIC_ATTR = "diffinject.metric"


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise DiffinjectError(f"params '{SECTION}.sampler': got {kind!r}, expected tpe or random")


def join_study(cfg: SearchConfig, url: str, reg: RegistryConfig, seed: int, root: Path) -> tuple[optuna.Study, int]:
    """Open the storage (creating its schema), create or load the study, check it optimises the same
    metric in the same direction, and take a worker index: all under the store lock, so two workers
    started at once do not both create the schema, and get indices 0 and 1."""
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
        worker = int(study.user_attrs.get(WORKERS_ATTR, 0))
        study.set_user_attr(WORKERS_ATTR, worker + 1)
        study.set_user_attr(METRIC_ATTR, reg.metric)
    # seed + worker: two workers of one study must not draw the same random start-up trials
    study = optuna.load_study(study_name=cfg.study_name, storage=storage,
                              sampler=make_sampler(cfg.sampler, seed + worker), pruner=make_pruner(cfg))
    return study, worker
