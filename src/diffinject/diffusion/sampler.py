"""DDIM inversion and h-space injection sampling (Song et al. 2021; Asyrp, Kwon et al. 2023;
DiffStyle / InjectFusion, Jeong et al. 2024), batched.

Symbols, code name -> paper:
    a_t       ᾱ_t, cumulative product of (1 - β) at timestep t; ᾱ_{-1} = 1
    eps       ε_θ(x_t, t), the UNet's noise prediction
    eps_inj   ε̃, the prediction with the content h injected
    x0        P_t(ε) = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t, predicted x_0 (DDIM Eq. 12)
    sigma     σ_t(η) = η·√((1−ᾱ_{t−1})/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_{t−1}) (DDIM Eq. 16)

The official code runs one (content, style) pair per process with batch 1; here every tensor carries a
batch dimension, inversions are cached and reused across h_gamma values.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from diffusers import DDPMScheduler
from torch import nn
from tqdm import tqdm

from diffinject.diffusion.shared_encoder import SharedEncoder
from diffinject.diffusion.sites import H_SITE, OPERATORS, Features, SiteHook, check_sites

# Asyrp / DiffInject scale the noise-direction term by dt_lambda only early in generation, for
# t >= 950 of the 1000-step schedule (InjectFusion's `dt_end`): 0.95·T for a schedule of T steps.
DT_LAMBDA_FROM_FRACTION = 0.95
# What the UNet predicts (diffusers' scheduler `prediction_type`); the sampler converts to ε.
PREDICTION_TYPES = ("epsilon", "v_prediction")


def timestep_grid(n_steps: int, num_train_timesteps: int) -> np.ndarray:
    """The n_steps timesteps 0 .. T−1, evenly spaced (Asyrp's `seq_inv`), ascending ints."""
    if n_steps < 2:
        raise ValueError(f"need at least 2 DDIM steps, got {n_steps}")
    return np.round(np.linspace(0, 1, n_steps) * (num_train_timesteps - 1)).astype(np.int64)


def _alpha(alphas_cumprod: torch.Tensor, t: int) -> torch.Tensor:
    return alphas_cumprod[t] if t >= 0 else torch.ones((), dtype=alphas_cumprod.dtype)


def ddim_step(x_t: torch.Tensor, eps_x0: torch.Tensor, eps_dir: torch.Tensor, a_t: torch.Tensor,
              a_next: torch.Tensor, eta: float = 0.0, dir_scale: float = 1.0,
              noise: torch.Tensor | None = None, clip_x0: bool = False) -> torch.Tensor:
    """One (asymmetric) DDIM step from timestep t to t_next, either direction.

    x0 comes from eps_x0, the direction from eps_dir (Asyrp's asymmetric reverse process; equal
    tensors give plain DDIM). With eta = 0 and a_next < a_t this is the deterministic inversion step.
    """
    if eta > 0 and noise is None:
        raise ValueError(f"ddim_step: eta {eta} > 0 adds σ·z, so it needs `noise` (a tensor shaped like x_t)")
    x0 = (x_t - (1 - a_t).sqrt() * eps_x0) / a_t.sqrt()  # (1) predicted x_0, DDIM Eq. 12
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)  # data range; diffusers' `clip_sample`, for sampling from pure noise
    sigma = eta * ((1 - a_next) / (1 - a_t)).sqrt() * (1 - a_t / a_next).sqrt() if eta > 0 else 0.0  # (2) Eq. 16
    direction = (1 - a_next - sigma**2).sqrt() * eps_dir * dir_scale  # (3) "direction pointing to x_t"
    x_next = a_next.sqrt() * x0 + direction  # (4) DDIM Eq. 12
    if eta > 0:
        x_next = x_next + sigma * noise
    return x_next


@dataclass
class Inversion:
    """DDIM inversion of a batch: x_T and, when asked, h and x_t at every grid timestep."""

    x_T: torch.Tensor  # (B, C, H, W)
    timesteps: np.ndarray  # (n,) ascending; hs[i] / xs[i] belong to x_{timesteps[i]} on the inversion path
    hs: torch.Tensor | None  # (n, B, c, h, w)
    xs: torch.Tensor | None = None  # (n, B, C, H, W): xs[0] = x_0, xs[-1] = x_T


@torch.no_grad()
def ddim_invert(unet: nn.Module, scheduler: DDPMScheduler, x0: torch.Tensor, n_steps: int,
                keep_h: bool, hook: SiteHook | None = None, keep_path: bool = False) -> Inversion:
    """Deterministic DDIM inversion (eta 0) from t = 0 up to t = T−1 on `n_steps` timesteps, with the
    noise schedule (`alphas_cumprod`) and `prediction_type` of the UNet's `scheduler`. keep_path keeps
    x_t at every grid timestep, from which any site's features can be recomputed (`capture_features`)."""
    alphas_cumprod, prediction_type = scheduler.alphas_cumprod, checked_prediction_type(scheduler)
    grid = timestep_grid(n_steps, len(alphas_cumprod))
    own_hook = keep_h and hook is None
    if own_hook:
        hook = SiteHook(unet)
    try:
        x = x0
        hs, xs = [], [x0.float()]
        for t, t_next in zip(grid[:-1], grid[1:]):
            a_t, a_next = _alpha(alphas_cumprod, int(t)).to(x), _alpha(alphas_cumprod, int(t_next)).to(x)
            eps, h = _predict(unet, x, int(t), a_t, prediction_type, hook if keep_h else None)
            hs.append(h)
            x = ddim_step(x, eps, eps, a_t, a_next)
            xs.append(x)
        if keep_h:
            # h of x_T itself, so a generation on the same grid finds content h at every one of its steps
            hs.append(_predict(unet, x, int(grid[-1]), _alpha(alphas_cumprod, int(grid[-1])).to(x), prediction_type, hook)[1])
    finally:
        if own_hook:
            hook.remove()
    return Inversion(x_T=x, timesteps=grid, hs=torch.stack(hs) if keep_h else None,
                     xs=torch.stack(xs) if keep_path else None)


def checked_prediction_type(scheduler: DDPMScheduler) -> str:
    """What the UNet predicts, from its scheduler's config: epsilon or v_prediction."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r}: expected one of {', '.join(PREDICTION_TYPES)}")
    return prediction_type


def eps_from_v(v: torch.Tensor, x_t: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """ε from a v-prediction (Salimans & Ho 2022): v = √ᾱ_t·ε − √(1−ᾱ_t)·x_0 and
    x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε give ε = √ᾱ_t·v + √(1−ᾱ_t)·x_t, exactly."""
    return a_t.sqrt() * v + (1 - a_t).sqrt() * x_t


def _eps(unet: nn.Module, x: torch.Tensor, timestep: torch.Tensor, a_t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """ε_θ(x_t, t) in fp32, whatever the UNet predicts: the DDIM and DiffInject updates are written in ε.
    Under bf16/fp16 autocast (diffusion.precision) only the network's own arithmetic is rounded, never
    the DDIM update."""
    out = unet(x, timestep).sample.float()
    return out if prediction_type == "epsilon" else eps_from_v(out, x, a_t)


def _predict(unet: nn.Module, x: torch.Tensor, t: int, a_t: torch.Tensor, prediction_type: str,
             hook: SiteHook | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ε, h or None)."""
    timestep = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    if hook is None:
        return _eps(unet, x, timestep, a_t, prediction_type), None
    with hook.capture([H_SITE]):
        eps = _eps(unet, x, timestep, a_t, prediction_type)
    return eps, hook.captured[H_SITE][0]


SCHEDULES = ("every_step", "official")
# InjectFusion's `content_replace_step` default: content is injected on a 50-point grid over [0, T-1].
OFFICIAL_REPLACE_STEPS = 50


def floor_grid(n_steps: int, num_train_timesteps: int) -> np.ndarray:
    """InjectFusion's grids: `int(s + 1e-6)` of n_steps evenly spaced points over [0, T−1], ascending."""
    if n_steps < 2:
        raise ValueError(f"need at least 2 DDIM steps, got {n_steps}")
    return np.array([int(s + 1e-6) for s in np.linspace(0, 1, n_steps) * (num_train_timesteps - 1)], dtype=np.int64)


@dataclass
class InjectionConfig:
    """The sampler's config; its defaults are the pipeline's `injection.*` defaults (InjectionParams
    reads them from here), chosen on the valid split (docs/injection_operators.md): the content lends
    its colour through the channel statistics of the 7x7 and 14x14 skips, late in generation."""

    h_gamma: float = 1.0  # weight of the content's features: 0 keeps the style, 1 takes the content fully (DiffInject's slerp of h: 0.7)
    t_edit: int = 0  # inject only at timesteps t >= t_edit (0: the whole trajectory)
    t_max: int | None = 300  # ... and t <= t_max (None: no upper bound): colour is set late (t <~ 400) here, shape early
    t_boost: int = -1  # quality boost: stochastic DDIM (eta = 1) at t <= t_boost; -1 turns it off (its noise costs shape fidelity here)
    dt_lambda: float = 0.9985  # noise-direction scale at t >= 0.95·T (DiffInject's value)
    n_gen_step: int = 20  # DDIM generation steps
    clip_x0: bool = False  # clamp predicted x_0 to [-1, 1]; off for injection, which must stay invertible
    operator: str = "channel_stats"  # sites.OPERATORS: slerp (DiffStyle) | channel_stats (AdaIN-style) | channel_mean
    sites: tuple[str, ...] = ("up0", "up1")  # sites.site_names: h (mid block) | up0 | up1 | ...
    # every_step: a rounded n_gen_step grid, every step at t >= t_edit injects, eta and dt_lambda on every
    # step; official: InjectFusion's — a floored grid, injection (and eta, dt_lambda) only on the steps that
    # are also on the floored `replace_steps` grid, plain DDIM elsewhere
    schedule: str = "every_step"
    replace_steps: int = OFFICIAL_REPLACE_STEPS

    def check(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"injection schedule {self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if self.operator not in OPERATORS:
            raise ValueError(f"injection operator {self.operator!r}: expected one of {', '.join(OPERATORS)}")


@dataclass(frozen=True)
class Step:
    """One generation step t -> t_next and what happens on it."""

    t: int
    t_next: int  # -1: the last step, to x_0
    inject: bool  # the content's features enter ε̃ (else ε̃ = ε)
    eta: float  # 0: deterministic DDIM, 1: the quality boost's stochastic step
    dir_scale: float  # dt_lambda or 1


def plan_steps(config: InjectionConfig, num_train_timesteps: int) -> list[Step]:
    """The generation steps, descending, of `config.schedule` (DESIGN.md, "The official schedule")."""
    config.check()
    dt_from = DT_LAMBDA_FROM_FRACTION * num_train_timesteps
    if config.schedule == "every_step":
        grid = timestep_grid(config.n_gen_step, num_train_timesteps)
        replace = set(int(t) for t in grid)
    else:
        grid = floor_grid(config.n_gen_step, num_train_timesteps)
        replace = set(int(t) for t in floor_grid(config.replace_steps, num_train_timesteps))
    descending = [int(t) for t in grid[::-1]]
    steps = []
    for t, t_next in zip(descending, descending[1:] + [-1]):
        if t not in replace:  # official schedule only: plain DDIM between replace steps
            steps.append(Step(t, t_next, inject=False, eta=0.0, dir_scale=1.0))
            continue
        dir_scale = config.dt_lambda if t >= dt_from else 1.0
        eta = 1.0 if t <= config.t_boost else 0.0
        if config.schedule == "official" and dir_scale != 1.0:
            eta = 0.0  # InjectFusion's dt_lambda branch recomputes x_{t-1} without the noise term
        in_window = config.t_edit <= t and (config.t_max is None or t <= config.t_max)
        steps.append(Step(t, t_next, inject=in_window and config.h_gamma > 0, eta=eta, dir_scale=dir_scale))
    if config.h_gamma > 0 and not any(step.inject for step in steps):
        # else the "synthetic" pool would silently be plain reconstructions of the styles
        window = f"t_edit {config.t_edit} .. t_max {'none' if config.t_max is None else config.t_max}"
        raise ValueError(f"the window {window} holds none of the {len(steps)} {config.schedule} generation steps "
                         f"(timesteps {descending[-1]} .. {descending[0]} of {num_train_timesteps}): nothing would be injected")
    return steps


def _content_at(content: Features, index: int) -> Features:
    return {site: tuple(t[index] for t in tensors) for site, tensors in content.items()}


class InjectionSampler:
    """Generates from style x_T with a content image's features mixed into chosen UNet sites.

    At each step of the plan (`plan_steps`), on injected steps:
        ε = ε_θ(x_t, t)                                                        (1)
        ε̃ = ε_θ(x_t, t | site ← operator(site, content's site, h_gamma))      (2)
        x_{t−1} = √ᾱ_{t−1}·P_t(ε̃) + √(1−ᾱ_{t−1}−σ²)·ε·λ_t + σ·z                (3)
    with σ from the step's eta and λ_t its dt_lambda scale; on other steps ε̃ = ε. The content's
    features at step t are those stored at the nearest inversion timestep. ε and ε̃ share the encoder
    pass (conv_in, down blocks, mid block: `SharedEncoder`) unless share_encoder is False; the up-block
    sites are in the decoder, so the replay still sees them injected. A network without UNet2DModel's
    encoder layout runs two full passes, and says so once.

    A context manager: the site hooks are on the UNet only inside `with InjectionSampler(...) as s:`.
    """

    def __init__(self, unet: nn.Module, scheduler: DDPMScheduler, config: InjectionConfig, share_encoder: bool = True):
        self.prediction_type = checked_prediction_type(scheduler)
        self.unet = unet
        self.alphas_cumprod = scheduler.alphas_cumprod
        self.config = config
        check_sites(config.sites, unet)
        self.steps = plan_steps(config, len(self.alphas_cumprod))
        self.share_encoder = share_encoder and SharedEncoder.fits(unet)
        if share_encoder and not self.share_encoder:
            warnings.warn(f"{type(unet).__name__} lacks UNet2DModel's conv_in / down_blocks / mid_block: each injected "
                          "step runs two full UNet passes instead of sharing the encoder", stacklevel=2)
        self.hook: SiteHook | None = None
        self.encoder: SharedEncoder | None = None

    def __enter__(self) -> "InjectionSampler":
        self.hook = SiteHook(self.unet)
        self.encoder = SharedEncoder(self.unet) if self.share_encoder else None
        return self

    def __exit__(self, *exc_info) -> None:
        if self.hook is not None:
            self.hook.remove()
        self.hook = self.encoder = None

    def _eps_pair(self, x: torch.Tensor, timestep: torch.Tensor, a_t: torch.Tensor,
                  content_here: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """(1) ε and (2) ε̃ at one injected step; the second pass replays the first's encoder."""
        cfg = self.config
        with self.encoder.record() if self.encoder else contextlib.nullcontext():
            eps = _eps(self.unet, x, timestep, a_t, self.prediction_type)
        with self.encoder.replay() if self.encoder else contextlib.nullcontext(), \
                self.hook.inject(content_here, cfg.operator, cfg.h_gamma):
            eps_inj = _eps(self.unet, x, timestep, a_t, self.prediction_type)
        return eps, eps_inj

    @torch.no_grad()
    def generate(self, x_T: torch.Tensor, content: Features | torch.Tensor | None, content_timesteps: np.ndarray | None,
                 generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
        """x_T: (B, C, H, W) style latents; content: site -> tensors of shape (n_inv, B, ...) on the
        inversion grid `content_timesteps` (a bare tensor is h), or None for plain DDIM."""
        if self.hook is None:
            raise RuntimeError("InjectionSampler.generate: use it inside `with InjectionSampler(...) as sampler:`")
        cfg = self.config
        if isinstance(content, torch.Tensor):
            content = {H_SITE: (content,)}
        if content is not None:
            missing = [site for site in cfg.sites if site not in content]
            if missing:
                raise ValueError(f"content features lack site {missing[0]!r} (have {', '.join(content)})")
            content = {site: content[site] for site in cfg.sites}
        x = x_T
        for step in tqdm(self.steps, desc="inject: DDIM steps", disable=not progress, leave=False):
            x = self.step(x, step, content, content_timesteps, generator)
        return x

    def step(self, x: torch.Tensor, step: Step, content: Features | None, content_timesteps: np.ndarray | None,
             generator: torch.Generator | None = None, eps_grad_scale: float | None = None) -> torch.Tensor:
        """One step of the plan, x_t -> x_{t_next}, (1)-(3). With `eps_grad_scale` (the fair generator's
        adjusted direct fine-tuning, diffusion/fair.py) the UNet sees x_t detached, so the gradient
        reaches x_t only through the update's linear terms, and the gradient of ε and ε̃ is scaled."""
        x_in = x.detach() if eps_grad_scale is not None else x
        timestep = torch.full((x.shape[0],), step.t, device=x.device, dtype=torch.long)
        a_t, a_next = _alpha(self.alphas_cumprod, step.t).to(x), _alpha(self.alphas_cumprod, step.t_next).to(x)
        if content is not None and step.inject:
            here = _content_at(content, int(np.abs(content_timesteps - step.t).argmin()))
            eps, eps_inj = self._eps_pair(x_in, timestep, a_t, here)  # (1), (2)
        else:
            eps = eps_inj = _eps(self.unet, x_in, timestep, a_t, self.prediction_type)  # (1); ε̃ = ε
        if eps_grad_scale is not None and eps.requires_grad:
            scale = float(eps_grad_scale)
            eps.register_hook(lambda grad: grad * scale)
            if eps_inj is not eps:
                eps_inj.register_hook(lambda grad: grad * scale)
        noise = None
        if step.eta > 0:  # z of (3)
            noise = torch.randn(x.shape, generator=generator, device=x.device if generator is None else generator.device).to(x)
        # (3): x_0 from ε̃, the direction from ε (Asyrp's asymmetric step)
        return ddim_step(x, eps_inj, eps, a_t, a_next, eta=step.eta, dir_scale=step.dir_scale, noise=noise,
                         clip_x0=self.config.clip_x0)


@torch.no_grad()
def capture_features(unet: nn.Module, xs: torch.Tensor, timesteps: np.ndarray, sites: Sequence[str],
                     batch_size: int = 256) -> Features:
    """The features at `sites` of images on their inversion path: xs (n_steps, N, C, H, W) is x_t at each
    of `timesteps` -> site -> tensors of shape (n_steps, N, ...) in fp32, on the CPU."""
    check_sites(sites, unet)
    hook = SiteHook(unet)
    per_step: list[Features] = []
    try:
        for i, t in enumerate(timesteps):
            chunks: list[Features] = []
            for start in range(0, xs.shape[1], batch_size):
                x = xs[i, start:start + batch_size].to(next(unet.parameters()).device)
                with hook.capture(sites):
                    unet(x, torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long))
                chunks.append({s: tuple(f.cpu() for f in hook.captured[s]) for s in sites})
            per_step.append({s: tuple(torch.cat([c[s][k] for c in chunks]) for k in range(len(chunks[0][s]))) for s in sites})
    finally:
        hook.remove()
    return {s: tuple(torch.stack([p[s][k] for p in per_step]) for k in range(len(per_step[0][s]))) for s in sites}
