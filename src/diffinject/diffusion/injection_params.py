"""`injection.*`: the one schema of the params section, and the config the injection sampler runs on.
`invert` (n_inv_step, batch_size and the style-pool keys), `probe`, `train_diffusion` (the step counts)
and `inject` (all of it) read it. It imports no sampler or operator code, so an edit of how the pool is
generated does not re-run the stages that only read a key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from diffinject.errors import DiffinjectError

# The operators diffusion/sites.py implements (it checks that it implements exactly these).
OPERATORS = ("slerp", "channel_stats", "channel_mean")
# every_step: a rounded n_gen_step grid, every step at t >= t_edit injects, eta and dt_lambda on every
# step; official: InjectFusion's — a floored grid, injection (and eta, dt_lambda) only on the steps that
# are also on the floored `replace_steps` grid, plain DDIM elsewhere (sampler.plan_steps).
SCHEDULES = ("every_step", "official")
# InjectFusion's `content_replace_step` default: content is injected on a 50-point grid over [0, T-1].
OFFICIAL_REPLACE_STEPS = 50
# The keys that make a pool image, in the order the synthetic manifest records them (its columns).
GENERATION_KEYS = ("h_gamma", "t_edit", "t_max", "t_boost", "dt_lambda", "n_gen_step", "clip_x0", "operator",
                   "sites", "schedule", "replace_steps")


LABEL_RULES = ("content", "style")


@dataclass(frozen=True)
class Candidate:
    """One injection setting the pilot tries; the keys are `injection.*`'s."""

    operator: str
    sites: tuple[str, ...]
    t_max: int | None
    h_gamma: float
    label_from: str  # content | style

    @property
    def name(self) -> str:
        window = "all t" if self.t_max is None else f"t<={self.t_max}"
        return f"{self.operator} {'+'.join(self.sites)} {window} g{self.h_gamma:g} label:{self.label_from}"

    def as_params(self) -> dict:
        """The `injection.*` keys this candidate sets (t_edit 0: the window is [0, t_max])."""
        return {"operator": self.operator, "site": list(self.sites), "t_edit": 0, "t_max": self.t_max,
                "h_gamma": self.h_gamma, "label_from": self.label_from}


def parse_candidate(text: str) -> list[Candidate]:
    """"operator=channel_stats,site=up0+up1,t_max=300,h_gamma=1.0[,label_from=style]" -> its candidates
    (both label rules unless one is named). Raises ValueError naming the bad part."""
    values: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is not key=value")
        values[key.strip()] = value.strip()
    unknown = set(values) - {"operator", "site", "t_max", "h_gamma", "label_from"}
    if unknown or not {"operator", "site"} <= set(values):
        raise ValueError(f"{text!r}: expected operator=..,site=a+b[,t_max=..][,h_gamma=..][,label_from=..]")
    t_max = None if values.get("t_max", "null") in ("null", "none", "None") else int(values["t_max"])
    rules = (values["label_from"],) if "label_from" in values else LABEL_RULES
    if not set(rules) <= set(LABEL_RULES):
        raise ValueError(f"{text!r}: label_from must be content or style")
    sites = tuple(s for s in values["site"].split("+") if s)
    return [Candidate(values["operator"], sites, t_max, float(values.get("h_gamma", 1.0)), rule) for rule in rules]


@dataclass
class InjectionParams:
    """`injection.*`. `invert` reads n_inv_step, styles_per_class and style_easiest_fraction (so a
    change of any other key never re-inverts); `inject` reads the rest."""

    # auto: a pilot (diffusion/pilot.py) chooses operator, site, window, gamma and label rule per dataset,
    # without bias labels; the keys below are then only the fallback of `auto: false`.
    auto: bool = True
    pilot_size: int = 128  # pilot images per candidate
    pilot_grid: list[str] | None = None  # candidates as "operator=..,site=a+b,t_max=..,h_gamma=.."; null = pilot_grid.DEFAULT_GRID
    pilot_reference: str = "lff"  # the model whose prediction measures a pilot image's label fidelity: lff | disent | lc | vanilla | auto (best valid acc)
    # The sampler's keys. Their defaults were chosen on the valid split (docs/injection_operators.md): the
    # content lends its colour through the channel statistics of the 7x7 and 14x14 skips, late in generation.
    h_gamma: float = 1.0  # weight of the content's features: 0 keeps the style, 1 takes the content (DiffInject's slerp of h: 0.7)
    operator: str = "channel_stats"  # slerp (DiffStyle) | channel_stats (AdaIN-style) | channel_mean (sites.py)
    site: str | list[str] = field(default_factory=lambda: ["up0", "up1"])  # h (mid block) | up0 | up1 | ..., a list or "a,b"
    schedule: str = "every_step"  # every_step | official (InjectFusion's replace steps, sampler.plan_steps)
    replace_steps: int = OFFICIAL_REPLACE_STEPS  # official schedule: points of the replace grid over [0, T-1]
    t_edit: int = 0  # inject at t >= t_edit; 0 = the whole trajectory
    t_max: int | None = 300  # ... and at t <= t_max; null = no upper bound: colour is set late (t <~ 400) here, shape early
    t_boost: int = -1  # eta = 1 at t <= t_boost (Asyrp's quality boost); -1 turns it off (its noise costs shape fidelity here)
    dt_lambda: float = 0.9985  # noise-direction scale at t >= 0.95·T (DiffInject's value)
    clip_x0: bool = False  # clamp predicted x_0 to [-1, 1]; off: an injected trajectory must stay invertible
    n_inv_step: int = 20  # DDIM inversion steps (invert, probe, train_diffusion's reconstruction)
    n_gen_step: int = 20  # DDIM generation steps
    n_samples: int = 400  # size of the synthetic pool, unless n_samples_ratio is set
    n_samples_ratio: float | None = 0.5  # the pool size as a fraction of |train| (as many as train_debiased draws)
    label_from: Literal["content", "style", "auto"] = "auto"  # auto: decided from metrics/probe.json, no bias label read
    batch_size: int = 64
    # base: the DDPM as trained; fair: with the LoRA adapter of stage fair_finetune (models/fair/), on the
    # setting the adapter was fine-tuned for (diffusion/fair.py)
    generator: Literal["base", "fair"] = "base"
    styles_per_class: int = 20  # style images inverted per class
    style_easiest_fraction: float = 0.5  # styles are drawn from this lowest-loss fraction of each class

    def check(self) -> None:
        if not 0 <= self.h_gamma <= 1:
            raise DiffinjectError(f"params 'injection.h_gamma': got {self.h_gamma}, expected a weight in [0, 1]")
        for key in ("n_inv_step", "n_gen_step"):
            if getattr(self, key) < 2:
                raise DiffinjectError(f"params 'injection.{key}': got {getattr(self, key)}, expected >= 2")
        if self.n_samples < 1 and self.n_samples_ratio is None:
            raise DiffinjectError(f"params 'injection.n_samples': got {self.n_samples}, expected >= 1")
        if self.n_samples_ratio is not None and self.n_samples_ratio <= 0:
            raise DiffinjectError(f"params 'injection.n_samples_ratio': got {self.n_samples_ratio}, expected > 0 or null")
        if self.batch_size < 1 or self.styles_per_class < 1:
            raise DiffinjectError("params 'injection.batch_size' and 'injection.styles_per_class': expected >= 1")
        if self.operator not in OPERATORS:
            raise DiffinjectError(f"params 'injection.operator': got {self.operator!r}, expected one of {', '.join(OPERATORS)}")
        if self.schedule not in SCHEDULES:
            raise DiffinjectError(f"params 'injection.schedule': got {self.schedule!r}, expected one of {', '.join(SCHEDULES)}")
        if self.label_from not in ("content", "style", "auto"):
            raise DiffinjectError(f"params 'injection.label_from': got {self.label_from!r}, expected content, style or auto")
        if not self.sites():
            raise DiffinjectError("params 'injection.site': expected a site (h, up0, up1, ...) or a list of them")
        if self.generator not in ("base", "fair"):
            raise DiffinjectError(f"params 'injection.generator': got {self.generator!r}, expected base or fair")
        if self.replace_steps < 2:
            raise DiffinjectError(f"params 'injection.replace_steps': got {self.replace_steps}, expected >= 2")
        if not 0 < self.style_easiest_fraction <= 1:
            raise DiffinjectError(f"params 'injection.style_easiest_fraction': got {self.style_easiest_fraction}, expected (0, 1]")

        if self.pilot_size < 1:
            raise DiffinjectError(f"params 'injection.pilot_size': got {self.pilot_size}, expected >= 1")
        if self.pilot_reference not in ("lff", "disent", "lc", "vanilla", "auto"):
            raise DiffinjectError(f"params 'injection.pilot_reference': got {self.pilot_reference!r}, expected lff, disent, lc, "
                                  "vanilla or auto (never the biased model: it is the bias proxy)")
        try:  # a user's grid (the built-in one, diffusion/pilot_grid.py, is checked by tests/test_pilot.py)
            for candidate in (c for text in self.pilot_grid or () for c in parse_candidate(text)):
                if candidate.operator not in OPERATORS:
                    raise ValueError(f"operator {candidate.operator!r} is not one of {', '.join(OPERATORS)}")
        except ValueError as exc:
            raise DiffinjectError(f"params 'injection.pilot_grid': {exc}") from exc

    def sites(self) -> tuple[str, ...]:
        names = self.site.split(",") if isinstance(self.site, str) else list(self.site)
        return tuple(name.strip() for name in names if name.strip())

    def generation_record(self) -> dict:
        """The keys that made a pool image, as the synthetic manifest's columns record them."""
        return {key: "+".join(self.sites()) if key == "sites" else getattr(self, key) for key in GENERATION_KEYS}

    def pool_size(self, n_train: int) -> int:
        return int(np.ceil(self.n_samples_ratio * n_train)) if self.n_samples_ratio is not None else self.n_samples
