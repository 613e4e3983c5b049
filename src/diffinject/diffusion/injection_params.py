"""`injection.*`, the schema of the params section that `invert` (n_inv_step, batch_size and the
style-pool keys), `probe`, `train_diffusion` (the step counts) and `inject` (all of it) read. Its own
module, so a change to how the pool is generated does not re-run the stages that only read a key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from diffinject.diffusion.pilot_grid import candidate_grid
from diffinject.diffusion.sampler import SCHEDULES, InjectionConfig
from diffinject.diffusion.sites import OPERATORS
from diffinject.errors import DiffinjectError


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
    # The sampler's keys default to InjectionConfig's (one place for each default).
    h_gamma: float = InjectionConfig.h_gamma  # weight of the content's features
    operator: str = InjectionConfig.operator  # slerp | channel_stats | channel_mean (sites.py)
    site: str | list[str] = field(default_factory=lambda: list(InjectionConfig.sites))  # h | up0 | ..., a list or a comma-separated string
    schedule: str = InjectionConfig.schedule  # every_step | official (InjectFusion's replace steps, sampler.plan_steps)
    replace_steps: int = InjectionConfig.replace_steps  # official schedule: points of the replace grid over [0, T-1]
    t_edit: int = InjectionConfig.t_edit  # inject at t >= t_edit; 0 = the whole trajectory
    t_max: int | None = InjectionConfig.t_max  # ... and at t <= t_max; null = no upper bound
    t_boost: int = InjectionConfig.t_boost  # eta = 1 at t <= t_boost (Asyrp's quality boost); -1 turns it off
    dt_lambda: float = InjectionConfig.dt_lambda  # noise-direction scale at t >= 950 (DiffInject)
    n_inv_step: int = 20  # DDIM inversion steps (invert, probe, train_diffusion's reconstruction)
    n_gen_step: int = InjectionConfig.n_gen_step
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
        try:
            for candidate in candidate_grid(self.pilot_grid):
                if candidate.operator not in OPERATORS:
                    raise ValueError(f"operator {candidate.operator!r} is not one of {', '.join(OPERATORS)}")
        except ValueError as exc:
            raise DiffinjectError(f"params 'injection.pilot_grid': {exc}") from exc

    def sites(self) -> tuple[str, ...]:
        names = self.site.split(",") if isinstance(self.site, str) else list(self.site)
        return tuple(name.strip() for name in names if name.strip())

    def sampler_config(self) -> InjectionConfig:
        return InjectionConfig(h_gamma=self.h_gamma, t_edit=self.t_edit, t_max=self.t_max, t_boost=self.t_boost,
                               dt_lambda=self.dt_lambda, n_gen_step=self.n_gen_step, operator=self.operator,
                               sites=self.sites(), schedule=self.schedule, replace_steps=self.replace_steps)

    def pool_size(self, n_train: int) -> int:
        return int(np.ceil(self.n_samples_ratio * n_train)) if self.n_samples_ratio is not None else self.n_samples
