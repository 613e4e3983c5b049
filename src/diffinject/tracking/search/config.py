"""`search.*` and the search space it defines: the study's settings (name, trials, sampler, storage,
ranges, pruner) and their checks; which params keys a trial sets (SPACE, and the injection setting),
how Optuna samples them, and the params a trial runs with (the repository's params with the trial's
values set at their dotted keys)."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna

from diffinject.config import check_at_least
from diffinject.errors import DiffinjectError

SECTION = "search"
_STUDY_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # also a folder name and an MLflow filter value

# search.<key> -> (params key a trial sets, sampled on a log scale); "{model}" is the objective's model
SPACE: dict[str, tuple[str, bool]] = {
    "h_gamma": ("injection.h_gamma", False),
    "bias_conflict_ratio": ("debiased.bias_conflict_ratio", False),
    "lr": ("{model}.lr", True),
}
# The categorical: which injection setting (operator, sites, window, label rule) a trial makes its pool with.
SETTING = "injection.setting"
VALUES_ATTR = "params"  # trial user attr: the dotted params keys the trial set (the setting expanded)


@dataclass
class SearchConfig:
    """`search.*`."""

    study_name: str = "diffinject"  # workers with the same name (and storage) share one study
    n_trials: int = 20  # per process (`--n-trials`)
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int | None = None  # sampler seed; null: the top-level `seed`
    storage: str | None = None  # Optuna storage URL; null: sqlite:///<repo>/mlruns/optuna.db
    h_gamma: list[float] = field(default_factory=lambda: [0.1, 1.0])
    bias_conflict_ratio: list[float] = field(default_factory=lambda: [0.05, 0.5])
    lr: list[float] = field(default_factory=lambda: [1e-4, 1e-2])  # log scale
    pruner: Literal["median", "none"] = "median"
    pruner_startup_trials: int = 3  # complete trials before the median pruner prunes any
    pruner_warmup_epochs: int = 5  # epochs of a trial's curve before it may be pruned (early epochs are noisy)
    model: str | None = None  # the model trials train; null: the registry's best candidate in metrics/eval.json
    search_injection: bool = True  # choose the injection setting too (the pilot's candidates)
    pilot_keep: float = 0.5  # settings whose pilot score is at least this x the winner's
    keep_trial_dirs: bool = False  # keep mlruns/search/<study>/trial-<n>/ (synthetic set, model) after a trial

    def check(self) -> None:
        if not _STUDY_NAME.match(self.study_name):
            raise DiffinjectError(f"params '{SECTION}.study_name': got {self.study_name!r}, expected letters, digits, _ . -")
        if self.n_trials < 1:
            raise DiffinjectError(f"params '{SECTION}.n_trials' (or --n-trials): got {self.n_trials}, expected >= 1")
        check_at_least(self, SECTION, 0, "pruner_warmup_epochs", "pruner_startup_trials")
        for key, (_, log) in SPACE.items():
            bounds = getattr(self, key)
            if len(bounds) != 2 or not bounds[0] < bounds[1]:
                raise DiffinjectError(f"params '{SECTION}.{key}': got {bounds}, expected [low, high] with low < high")
            if log and bounds[0] <= 0:
                raise DiffinjectError(f"params '{SECTION}.{key}': got {bounds}, a log-scale range needs low > 0")
        if not (0 <= self.h_gamma[0] and self.h_gamma[1] <= 1):
            raise DiffinjectError(f"params '{SECTION}.h_gamma': got {self.h_gamma}, expected within [0, 1] (a slerp weight)")
        if not 0 <= self.pilot_keep <= 1:
            raise DiffinjectError(f"params '{SECTION}.pilot_keep': got {self.pilot_keep}, expected a fraction in [0, 1]")
        if self.bias_conflict_ratio[0] < 0:
            raise DiffinjectError(f"params '{SECTION}.bias_conflict_ratio': got {self.bias_conflict_ratio}, expected >= 0")


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
