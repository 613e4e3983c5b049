"""The search space: which params keys a trial sets, how Optuna samples them, and the params a trial
runs with (the repository's params with the trial's values set at their dotted keys)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import optuna

from diffinject.errors import DiffinjectError

if TYPE_CHECKING:  # config imports SPACE from here to check the ranges
    from diffinject.tracking.search.config import SearchConfig

# search.<key> -> (params key a trial sets, sampled on a log scale); "{model}" is the objective's model
SPACE: dict[str, tuple[str, bool]] = {
    "h_gamma": ("injection.h_gamma", False),
    "bias_conflict_ratio": ("debiased.bias_conflict_ratio", False),
    "lr": ("{model}.lr", True),
}
# The categorical: which injection setting (operator, sites, window, label rule) a trial makes its pool with.
SETTING = "injection.setting"
VALUES_ATTR = "params"  # trial user attr: the dotted params keys the trial set (the setting expanded)


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


def float_keys(model: str) -> dict[str, tuple[str, bool]]:
    """SPACE with the objective's model in its targets."""
    return {key: (target.format(model=model), log) for key, (target, log) in SPACE.items()}


def suggest(trial: optuna.Trial, cfg: SearchConfig, model: str, settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The trial's values, by dotted params key: the floats of SPACE and, when `settings` (name -> its
    `injection.*` keys) is not empty, one injection setting, its keys expanded."""
    values: dict[str, Any] = {}
    if settings:
        name = trial.suggest_categorical(SETTING, list(settings))
        # auto off: the trial's setting, not the pilot's, makes the pool (and params.best.yaml keeps it)
        values.update({"injection.auto": False, **{f"injection.{k}": v for k, v in settings[name].items()}})
    values.update({target: trial.suggest_float(target, *getattr(cfg, key), log=log)
                   for key, (target, log) in float_keys(model).items()})
    return values
