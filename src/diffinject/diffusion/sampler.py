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
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDPMScheduler
from torch import nn
from tqdm import tqdm

from diffinject.diffusion.hspace import HSpaceHook
from diffinject.diffusion.shared_encoder import SharedEncoder

# Asyrp / DiffInject scale the noise-direction term by dt_lambda only early in generation, for
# t >= 950 of the 1000-step schedule (Asyrp `denoising_step`, `dt_lambda` and `t_edit` of its configs).
DT_LAMBDA_FROM_T = 950
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
    """DDIM inversion of a batch: x_T and, when asked, h at every grid timestep."""

    x_T: torch.Tensor  # (B, C, H, W)
    timesteps: np.ndarray  # (n,) ascending; hs[i] is h of x_{timesteps[i]} on the inversion path
    hs: torch.Tensor | None  # (n, B, c, h, w)


@torch.no_grad()
def ddim_invert(unet: nn.Module, scheduler: DDPMScheduler, x0: torch.Tensor, n_steps: int,
                keep_h: bool, hook: HSpaceHook | None = None) -> Inversion:
    """Deterministic DDIM inversion (eta 0) from t = 0 up to t = T−1 on `n_steps` timesteps, with the
    noise schedule (`alphas_cumprod`) and `prediction_type` of the UNet's `scheduler`."""
    alphas_cumprod, prediction_type = scheduler.alphas_cumprod, checked_prediction_type(scheduler)
    grid = timestep_grid(n_steps, len(alphas_cumprod))
    own_hook = keep_h and hook is None
    if own_hook:
        hook = HSpaceHook(unet)
    try:
        x = x0
        hs = []
        for t, t_next in zip(grid[:-1], grid[1:]):
            a_t, a_next = _alpha(alphas_cumprod, int(t)).to(x), _alpha(alphas_cumprod, int(t_next)).to(x)
            eps, h = _predict(unet, x, int(t), a_t, prediction_type, hook if keep_h else None)
            hs.append(h)
            x = ddim_step(x, eps, eps, a_t, a_next)
        if keep_h:
            # h of x_T itself, so a generation on the same grid finds content h at every one of its steps
            hs.append(_predict(unet, x, int(grid[-1]), _alpha(alphas_cumprod, int(grid[-1])).to(x), prediction_type, hook)[1])
    finally:
        if own_hook:
            hook.remove()
    return Inversion(x_T=x, timesteps=grid, hs=torch.stack(hs) if keep_h else None)


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
             hook: HSpaceHook | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    timestep = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    if hook is None:
        return _eps(unet, x, timestep, a_t, prediction_type), None
    with hook.capture():
        eps = _eps(unet, x, timestep, a_t, prediction_type)
    return eps, hook.captured


@dataclass
class InjectionConfig:
    h_gamma: float = 0.7  # slerp weight of the content h: 0 keeps the style, 1 takes the content fully
    t_edit: int = 0  # inject only at timesteps t >= t_edit (0: the whole trajectory)
    t_boost: int = 200  # quality boost: stochastic DDIM (eta = 1) at t <= t_boost; -1 turns it off
    dt_lambda: float = 0.9985  # noise-direction scale at t >= DT_LAMBDA_FROM_T (DiffInject's value)
    n_gen_step: int = 20  # DDIM generation steps
    clip_x0: bool = False  # clamp predicted x_0 to [-1, 1]; off for injection, which must stay invertible


class InjectionSampler:
    """Generates from style x_T with content h injected into the UNet's middle block.

    At each generation timestep t (descending), for t >= t_edit:
        ε̃ = ε_θ(x_t, t | h ← slerp(h, h_c', h_gamma)),   ε = ε_θ(x_t, t)
        x_{t−1} = √ᾱ_{t−1}·P_t(ε̃) + √(1−ᾱ_{t−1}−σ²)·ε·λ_t + σ·z
    with σ from eta = 1 at t <= t_boost (else 0) and λ_t = dt_lambda at t >= 950 (else 1).
    h_c at step t is the content h stored at the nearest inversion timestep. ε and ε̃ share the
    encoder pass (conv_in, down blocks, mid block: `SharedEncoder`) unless share_encoder is False or the
    network lacks UNet2DModel's layout (then each is a full pass).
    """

    def __init__(self, unet: nn.Module, scheduler: DDPMScheduler, config: InjectionConfig, share_encoder: bool = True):
        self.prediction_type = checked_prediction_type(scheduler)
        self.unet = unet
        self.alphas_cumprod = scheduler.alphas_cumprod
        self.config = config
        self.hook = HSpaceHook(unet)
        self.encoder = SharedEncoder(unet) if share_encoder and SharedEncoder.fits(unet) else None
        self.grid = timestep_grid(config.n_gen_step, len(self.alphas_cumprod))

    def close(self) -> None:
        self.hook.remove()

    @torch.no_grad()
    def generate(self, x_T: torch.Tensor, content_hs: torch.Tensor | None, content_timesteps: np.ndarray | None,
                 generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
        """x_T: (B, C, H, W) style latents; content_hs: (n_inv, B, c, h, w) or None for plain DDIM."""
        cfg = self.config
        x = x_T
        descending = self.grid[::-1]
        steps = list(zip(descending, list(descending[1:]) + [-1]))
        for t, t_next in tqdm(steps, desc="inject: DDIM steps", disable=not progress, leave=False):
            t, t_next = int(t), int(t_next)
            timestep = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            a_t, a_next = _alpha(self.alphas_cumprod, t).to(x), _alpha(self.alphas_cumprod, t_next).to(x)
            if content_hs is not None and t >= cfg.t_edit and cfg.h_gamma > 0:
                h_c = content_hs[int(np.abs(content_timesteps - t).argmin())]
                with self.encoder.record() if self.encoder else contextlib.nullcontext():
                    eps = _eps(self.unet, x, timestep, a_t, self.prediction_type)
                with self.encoder.replay() if self.encoder else contextlib.nullcontext(), self.hook.inject(h_c, cfg.h_gamma):
                    eps_inj = _eps(self.unet, x, timestep, a_t, self.prediction_type)
            else:
                eps = eps_inj = _eps(self.unet, x, timestep, a_t, self.prediction_type)
            eta = 1.0 if t <= cfg.t_boost else 0.0
            noise = None
            if eta > 0:
                noise = torch.randn(x.shape, generator=generator, device=x.device if generator is None else generator.device).to(x)
            x = ddim_step(
                x, eps_inj, eps, a_t, a_next, eta=eta, dir_scale=cfg.dt_lambda if t >= DT_LAMBDA_FROM_T else 1.0, noise=noise,
                clip_x0=cfg.clip_x0,
            )
        return x
