"""`search.*` and the search space it defines: the study's settings (name, trials, sampler, storage,
ranges, pruner) and their checks; which params keys a trial sets (SPACE, and the injection setting),
how Optuna samples them, and the params a trial runs with (the repository's params with the trial's
values set at their dotted keys)."""

from __future__ import annotations

import copy
import dataclasses
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


@dataclass(frozen=True)
class Dim:
    """One searched params key: a number between low and high, on a log scale or not, an integer or not."""

    target: str  # dotted params key, e.g. lff.ema_alpha
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def check(self) -> None:
        where = f"params '{SECTION}.ranges.{self.target}'"
        if not self.low < self.high:
            raise DiffinjectError(f"{where}: got [{self.low}, {self.high}], expected [low, high] with low < high")
        if self.log and self.low <= 0:
            raise DiffinjectError(f"{where}: got [{self.low}, {self.high}], a log-scale range needs low > 0")

    def suggest(self, trial: optuna.Trial) -> float | int:
        if self.integer:
            return trial.suggest_int(self.target, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.target, self.low, self.high, log=self.log)

    def clip(self, value: float) -> float | int:
        clipped = min(self.high, max(self.low, float(value)))
        return int(round(clipped)) if self.integer else clipped


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
    # replaces the range of keys of the searched model's own space: {lc: {tau: [0.5, 4]}} or {"lc.tau": [0.5, 4]}
    ranges: dict[str, Any] = field(default_factory=dict)

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


def shared_space(cfg: SearchConfig, model: str) -> list[Dim]:
    """The DiffInject rows' space: SPACE's keys at the ranges `search.*` sets."""
    return [Dim(target, *getattr(cfg, key), log=log) for key, (target, log) in float_keys(model).items()]


def dotted_ranges(ranges: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`search.ranges` as {dotted key: [low, high]}, whether written nested or dotted."""
    out: dict[str, Any] = {}
    for key, value in ranges.items():
        if isinstance(value, dict):
            out.update(dotted_ranges(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def with_ranges(space: list[Dim], ranges: dict[str, Any], model: str) -> list[Dim]:
    """`space` with the ranges `search.ranges` sets for some of its keys; a key not in it is an error."""
    ranges = dotted_ranges(ranges)
    known = {dim.target for dim in space}
    for key, bounds in ranges.items():
        if key not in known:
            raise DiffinjectError(f"params '{SECTION}.ranges.{key}': not a key the search of {model} samples "
                                  f"(its space: {', '.join(sorted(known))})")
        if not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds):
            raise DiffinjectError(f"params '{SECTION}.ranges.{key}': got {bounds!r}, expected [low, high]")
    out = [dataclasses.replace(dim, low=ranges[dim.target][0], high=ranges[dim.target][1])
           if dim.target in ranges else dim for dim in space]
    for dim in out:
        dim.check()
    return out


def suggest(trial: optuna.Trial, cfg: SearchConfig, model: str, settings: dict[str, dict[str, Any]],
            space: list[Dim] | None = None) -> dict[str, Any]:
    """The trial's values, by dotted params key: the numbers of `space` (default: the DiffInject rows'
    shared space) and, when `settings` (name -> its `injection.*` keys) is not empty, one injection
    setting, its keys expanded."""
    values: dict[str, Any] = {}
    if settings:
        name = trial.suggest_categorical(SETTING, list(settings))
        # auto off: the trial's setting, not the pilot's, makes the pool (and params.best.yaml keeps it)
        values.update({"injection.auto": False, **{f"injection.{k}": v for k, v in settings[name].items()}})
    values.update({dim.target: dim.suggest(trial) for dim in (space if space is not None else shared_space(cfg, model))})
    return values
