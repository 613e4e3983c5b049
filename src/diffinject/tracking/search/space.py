"""The search space: which params keys a trial sets, how Optuna samples them, and the params a trial
runs with (the repository's params with the trial's values set at their dotted keys)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import optuna

from diffinject.errors import DiffinjectError

if TYPE_CHECKING:  # config imports SPACE from here to check the ranges
    from diffinject.tracking.search.config import SearchConfig

# search.<key> -> (params key a trial sets, sampled on a log scale)
SPACE: dict[str, tuple[str, bool]] = {
    "h_gamma": ("injection.h_gamma", False),
    "bias_conflict_ratio": ("debiased.bias_conflict_ratio", False),
    "lr": ("debiased.lr", True),
}


def set_dotted(params: dict[str, Any], key: str, value: Any) -> None:
    node = params
    *parents, leaf = key.split(".")
    for name in parents:
        node = node.setdefault(name, {})
        if not isinstance(node, dict):
            raise DiffinjectError(f"params '{key}': {name!r} is not a section")
    node[leaf] = value


def overlay(params: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `params` with the dotted `values` set."""
    out = copy.deepcopy(params)
    for key, value in values.items():
        set_dotted(out, key, value)
    return out


def suggest(trial: optuna.Trial, cfg: SearchConfig) -> dict[str, float]:
    """The trial's values, by dotted params key."""
    return {target: trial.suggest_float(target, *getattr(cfg, key), log=log) for key, (target, log) in SPACE.items()}
