"""`injection.*`: the one schema of the params section, and the config the injection sampler runs on.
`invert` (n_inv_step, batch_size and the style-pool keys), `probe`, `train_diffusion` (the step counts)
and `inject` (all of it) read it. It imports no sampler, operator or pilot code, so an edit of how the
pool is generated, a new operator or a new pilot candidate does not re-run the stages that only read a
key: the operator, the sites and the pilot's grid are checked where they are used
(`check_against_model`, pilot/candidates.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

from diffinject.errors import DiffinjectError

# every_step: a rounded n_gen_step grid, every step at t >= t_edit injects, eta and dt_lambda on every
# step; official: InjectFusion's — a floored grid, injection (and eta, dt_lambda) only on the steps that
# are also on the floored `replace_steps` grid, plain DDIM elsewhere (sampler.plan_steps).
SCHEDULES = ("every_step", "official")
# InjectFusion's `content_replace_step` default: content is injected on a 50-point grid over [0, T-1].
OFFICIAL_REPLACE_STEPS = 50
# The keys that make a pool image, in the order the synthetic manifest records them (its columns).
GENERATION_KEYS = ("h_gamma", "t_edit", "t_max", "t_boost", "dt_lambda", "n_gen_step", "clip_x0", "operator",
                   "sites", "schedule", "replace_steps", "guidance_scale", "window_guidance_scale")


LABEL_RULES = ("content", "style")
AUTO = "auto"
# The keys of a class-conditional DDPM's guidance (diffusion/conditioning.py).
GUIDANCE_KEYS = ("guidance_scale", "window_guidance_scale")
# The keys a pilot candidate sets. Each is a value or `auto` in params: the pilot chooses only the keys
# left `auto` (its grid restricted to the values set, pilot/candidates.py's `restrict`).
PILOT_KEYS = ("operator", "site", "t_max", "h_gamma", "label_from", "guidance_scale", "window_guidance_scale")
# `auto: false` (no pilot): what a key left `auto` takes, but label_from (the probes decide it). Chosen
# by hand on Colored MNIST's valid split (docs/injection_operators.md): the content lends its colour
# through the channel statistics of the 7x7 and 14x14 skips, late in generation.
# guidance 1 everywhere: a class-conditional DDPM generates under the plain synthetic label.
HAND_CHOSEN = {"operator": "channel_stats", "site": ["up0", "up1"], "t_max": 300, "h_gamma": 1.0, "guidance_scale": 1.0,
               "window_guidance_scale": None}


PAIRINGS = ("random", "balanced")  # injection.pairing
PAIRING_PROXIES = ("biased", "channel_stats")  # injection.pairing_proxy


@dataclass
class PoolFilter:
    """`injection.filter`: each generated image passes two checks, neither reading a bias label, before it
    enters the pool; generation goes on until every label has its share of the pool or `max_tries` x the
    pool size have been tried (diffusion/pool_filter.py). Off by default: on mnist5k colour it raised the
    judge's label fidelity and lowered every DiffInject row (docs/label_in_generator.md)."""

    enabled: bool = False
    min_confidence: float = 0.5  # the reference model (injection.pilot_reference) gives the synthetic label at least this probability
    reject_biased: bool = True  # ... and the biased model (the bias proxy) does not predict it (a conflict)
    max_tries: float = 4.0  # at most this many generated images per pool image

    def check(self, section: str = "injection.filter") -> None:
        if not 0 <= self.min_confidence < 1:
            raise DiffinjectError(f"params '{section}.min_confidence': got {self.min_confidence}, expected a probability in [0, 1)")
        if self.max_tries < 1:
            raise DiffinjectError(f"params '{section}.max_tries': got {self.max_tries}, expected >= 1 (generated images per pool image)")


@dataclass
class InjectionParams:
    """`injection.*`. `invert` reads n_inv_step, styles_per_class and style_easiest_fraction (so a
    change of any other key never re-inverts); `inject` reads the rest."""

    # auto: the pilot (the pilot/ package) chooses the keys of PILOT_KEYS left `auto` per dataset, without
    # bias labels (its grid restricted to the values set); false: no pilot, a key left `auto` takes
    # HAND_CHOSEN's value (label_from: the probes decide).
    auto: bool = True
    pilot_size: int = 128  # pilot images per candidate
    pilot_rungs: int = 2  # successive halving: up to this many more rungs, each doubling the images of the candidates still tied with the best
    pilot_grid: list[str] | None = None  # candidates as "operator=..,site=a+b,t_max=..,h_gamma=.."; null = pilot/candidates.py's DEFAULT_GRID
    pilot_reference: str = "lff"  # the model whose prediction measures a pilot image's label fidelity: lff | disent | lc | vanilla | auto (best valid acc)
    # The sampler's keys; each of PILOT_KEYS may be `auto`.
    h_gamma: float | Literal["auto"] = AUTO  # weight of the content's features: 0 keeps the style, 1 takes the content (DiffInject's slerp of h: 0.7)
    operator: str = AUTO  # slerp (DiffStyle) | channel_stats (AdaIN-style) | channel_mean (diffusion/operators.py)
    site: str | list[str] = AUTO  # h (mid block) | up0 | up1 | ..., a list or "a,b"
    schedule: str = "every_step"  # every_step | official (InjectFusion's replace steps, sampler.plan_steps)
    replace_steps: int = OFFICIAL_REPLACE_STEPS  # official schedule: points of the replace grid over [0, T-1]
    t_edit: int = 0  # inject at t >= t_edit; 0 = the whole trajectory
    t_max: int | None | Literal["auto"] = AUTO  # ... and at t <= t_max; null = no upper bound
    t_boost: int = -1  # eta = 1 at t <= t_boost (Asyrp's quality boost); -1 turns it off (its noise costs shape fidelity here)
    dt_lambda: float = 0.9985  # noise-direction scale at t >= 0.95·T (DiffInject's value)
    clip_x0: bool = False  # clamp predicted x_0 to [-1, 1]; off: an injected trajectory must stay invertible
    n_inv_step: int = 20  # DDIM inversion steps (invert, probe, train_diffusion's reconstruction)
    n_gen_step: int = 20  # DDIM generation steps
    n_samples: int = 400  # size of the synthetic pool, unless n_samples_ratio is set
    n_samples_ratio: float | None = 0.5  # the pool size as a fraction of |train| (as many as train_debiased draws)
    label_from: Literal["content", "style", "auto"] = AUTO  # auto: the pilot's, or with auto: false the probes' (metrics/probe.json)
    # A class-conditional DDPM (diffusion.class_conditional) generates under the synthetic label with this
    # classifier-free guidance scale: 0 the null class, 1 the plain label, > 1 guided; auto: the pilot's
    # (GUIDANCE_GRID). An unconditional DDPM takes no scale (auto or null).
    guidance_scale: float | None | Literal["auto"] = AUTO
    # ... and on the injected steps (the window), where the content's features decide the bias; null:
    # guidance_scale's; auto: the pilot's (GUIDANCE_GRID)
    window_guidance_scale: float | None | Literal["auto"] = AUTO
    # Label-reader guidance (diffusion/reader_guidance.py): the late generation steps (t <= reader_t_max)
    # move the denoised estimate up the log-probability that `pilot_reference` reads the synthetic label
    # in it, with this scale; 0 = off. Any DDPM, conditional or not; reads no bias label.
    reader_guidance: float = 0.0
    reader_t_max: int = 300
    batch_size: int = 64
    # random: each pair's bias-lending image drawn at random among those that make a conflict; balanced:
    # per synthetic label, the proxy values of those images spread evenly (diffusion/injection.py)
    pairing: Literal["random", "balanced"] = "random"
    # what reads the bias proxy that pairs are made on (stage invert stores it): the biased classifier's
    # prediction, or channel_stats, a reader of colour fitted on those predictions (diffusion/bias_reader.py)
    pairing_proxy: Literal["biased", "channel_stats"] = "biased"
    # base: the DDPM as trained; fair: with the LoRA adapter of stage fair_finetune (models/fair/), on the
    # setting the adapter was fine-tuned for (diffusion/fair.py)
    generator: Literal["base", "fair"] = "base"
    styles_per_class: int = 20  # style images inverted per class
    style_easiest_fraction: float = 0.5  # styles are drawn from this lowest-loss fraction of each class
    filter: PoolFilter = field(default_factory=PoolFilter)  # a pool of faithful conflicts only (PoolFilter)

    def check(self) -> None:
        """Every value the params set, whether a pilot runs or not (a set value is obeyed, so it must be
        valid); the sites against the UNet and the window against T are `check_against_model`'s."""
        if self.h_gamma != AUTO and not 0 <= self.h_gamma <= 1:
            raise DiffinjectError(f"params 'injection.h_gamma': got {self.h_gamma}, expected a weight in [0, 1] or auto")
        for key in GUIDANCE_KEYS:
            if getattr(self, key) not in (AUTO, None) and not getattr(self, key) >= 0:
                raise DiffinjectError(f"params 'injection.{key}': got {getattr(self, key)}, expected >= 0, null or auto")
        if self.t_edit < 0:
            raise DiffinjectError(f"params 'injection.t_edit': got {self.t_edit}, expected >= 0")
        if self.reader_guidance < 0 or self.reader_t_max < 0:
            raise DiffinjectError(f"params 'injection.reader_guidance' / 'injection.reader_t_max': got {self.reader_guidance} / "
                                  f"{self.reader_t_max}, expected >= 0")
        if self.t_max not in (AUTO, None) and self.t_max < self.t_edit:
            raise DiffinjectError(f"params 'injection.t_max': got {self.t_max}, expected >= injection.t_edit ({self.t_edit}), null or auto")
        for key in ("n_inv_step", "n_gen_step"):
            if getattr(self, key) < 2:
                raise DiffinjectError(f"params 'injection.{key}': got {getattr(self, key)}, expected >= 2")
        if self.n_samples < 1 and self.n_samples_ratio is None:
            raise DiffinjectError(f"params 'injection.n_samples': got {self.n_samples}, expected >= 1")
        if self.n_samples_ratio is not None and self.n_samples_ratio <= 0:
            raise DiffinjectError(f"params 'injection.n_samples_ratio': got {self.n_samples_ratio}, expected > 0 or null")
        if self.batch_size < 1 or self.styles_per_class < 1:
            raise DiffinjectError("params 'injection.batch_size' and 'injection.styles_per_class': expected >= 1")
        if self.schedule not in SCHEDULES:
            raise DiffinjectError(f"params 'injection.schedule': got {self.schedule!r}, expected one of {', '.join(SCHEDULES)}")
        if self.label_from not in ("content", "style", "auto"):
            raise DiffinjectError(f"params 'injection.label_from': got {self.label_from!r}, expected content, style or auto")
        if self.site != AUTO and not self.sites():
            raise DiffinjectError("params 'injection.site': expected a site (h, up0, up1, ...), a list of them or auto")
        if self.pairing not in PAIRINGS:
            raise DiffinjectError(f"params 'injection.pairing': got {self.pairing!r}, expected one of {', '.join(PAIRINGS)}")
        if self.pairing_proxy not in PAIRING_PROXIES:
            raise DiffinjectError(f"params 'injection.pairing_proxy': got {self.pairing_proxy!r}, "
                                  f"expected one of {', '.join(PAIRING_PROXIES)}")
        if self.generator not in ("base", "fair"):
            raise DiffinjectError(f"params 'injection.generator': got {self.generator!r}, expected base or fair")
        if self.replace_steps < 2:
            raise DiffinjectError(f"params 'injection.replace_steps': got {self.replace_steps}, expected >= 2")
        if not 0 < self.style_easiest_fraction <= 1:
            raise DiffinjectError(f"params 'injection.style_easiest_fraction': got {self.style_easiest_fraction}, expected (0, 1]")

        self.filter.check()
        if self.pilot_size < 1:
            raise DiffinjectError(f"params 'injection.pilot_size': got {self.pilot_size}, expected >= 1")
        if self.pilot_rungs < 0:
            raise DiffinjectError(f"params 'injection.pilot_rungs': got {self.pilot_rungs}, expected >= 0")
        if self.pilot_reference not in ("lff", "disent", "lc", "vanilla", "auto"):
            raise DiffinjectError(f"params 'injection.pilot_reference': got {self.pilot_reference!r}, expected lff, disent, lc, "
                                  "vanilla or auto (never the biased model: it is the bias proxy)")

    def sites(self) -> tuple[str, ...]:
        if self.site == AUTO:
            raise ValueError("injection.site is still auto: resolve the setting (pilot or with_hand_chosen) first")
        names = self.site.split(",") if isinstance(self.site, str) else list(self.site)
        return tuple(name.strip() for name in names if name.strip())

    def fixed(self) -> dict:
        """The keys of PILOT_KEYS the params set (not `auto`), as a candidate's `as_params` names them."""
        return {key: list(self.sites()) if key == "site" else getattr(self, key)
                for key in PILOT_KEYS if getattr(self, key) != AUTO}

    def with_hand_chosen(self) -> "InjectionParams":
        """`auto: false`: every key of HAND_CHOSEN left `auto` takes its value (label_from stays: the
        probes decide it)."""
        return dataclasses.replace(self, **{k: v for k, v in HAND_CHOSEN.items() if getattr(self, k) == AUTO})

    def check_against_model(self, known_sites: Sequence[str], num_train_timesteps: int,
                            class_conditional: bool = False, operators: Sequence[str] = ()) -> None:
        """A set site must be one of this UNet's, a set operator one of `operators` (those the sampler
        implements, diffusion/operators.py), a set window must lie within [0, T - 1], a set guidance
        scale needs a class-conditional UNet."""
        self.check_operator(operators)
        for key in GUIDANCE_KEYS:
            if getattr(self, key) not in (AUTO, None) and not class_conditional:
                raise DiffinjectError(f"params 'injection.{key}': got {getattr(self, key)}, but the DDPM is not class-"
                                      f"conditional (set diffusion.class_conditional: true, or leave {key} auto)")
        if self.site != AUTO:
            wrong = [site for site in self.sites() if site not in known_sites]
            if wrong:
                raise DiffinjectError(f"params 'injection.site': {wrong[0]!r} is not a site of this UNet "
                                      f"(expected some of {', '.join(known_sites)}, or auto)")
        last = num_train_timesteps - 1
        if self.t_edit > last:
            raise DiffinjectError(f"params 'injection.t_edit': got {self.t_edit}, expected <= {last} (the DDPM's last timestep)")
        if self.t_max not in (AUTO, None) and self.t_max > last:
            raise DiffinjectError(f"params 'injection.t_max': got {self.t_max}, expected <= {last} (the DDPM's last "
                                  "timestep), null or auto")

    def check_operator(self, operators: Sequence[str]) -> None:
        """A set operator must be one of `operators`, those the sampler implements (the names of
        diffusion/operators.py's OPERATORS, which this schema does not import)."""
        if self.operator != AUTO and self.operator not in operators:
            raise DiffinjectError(f"params 'injection.operator': got {self.operator!r}, expected one of {', '.join(operators)} or auto")

    def generation_record(self) -> dict:
        """The keys that made a pool image, as the synthetic manifest's columns record them."""
        record = {key: "+".join(self.sites()) if key == "sites" else getattr(self, key) for key in GENERATION_KEYS}
        for key in GUIDANCE_KEYS:  # None: an unconditional DDPM (or no window scale): no column
            if record[key] is None:
                del record[key]
        return record

    def pool_size(self, n_train: int) -> int:
        return int(np.ceil(self.n_samples_ratio * n_train)) if self.n_samples_ratio is not None else self.n_samples

    def tries(self, n_train: int) -> int:
        """How many images may be generated for the pool: its size, or with the filter on max_tries x it."""
        n = self.pool_size(n_train)
        return int(np.ceil(self.filter.max_tries * n)) if self.filter.enabled else n
