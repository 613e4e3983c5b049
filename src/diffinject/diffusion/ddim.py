"""DDIM maths (Song et al. 2021) with Asyrp's asymmetric step (Kwon et al. 2023): timestep grids, the
update, ε from the UNet's prediction, deterministic inversion and plain generation. No injection here
(diffusion/sampler.py), so the DDPM stage, which measures reconstruction with these, does not depend
on the injection code. docs/design.md, "DDIM and the asymmetric update", has the derivation.

Symbols, code name -> paper:
    a_t       ᾱ_t, cumulative product of (1 - β) at timestep t; ᾱ_{-1} = 1
    eps       ε_θ(x_t, t), the UNet's noise prediction
    eps_inj   ε̃, the prediction with the content's features injected
    x0        P_t(ε) = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t, predicted x_0 (DDIM Eq. 12)
    sigma     σ_t(η) = η·√((1−ᾱ_{t−1})/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_{t−1}) (DDIM Eq. 16)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDPMScheduler
from torch import nn

from diffinject.diffusion.conditioning import Guidance, guided_output
# What the UNet predicts (diffusers' scheduler `prediction_type`); the updates convert to ε.
PREDICTION_TYPES = ("epsilon", "v_prediction")


def timestep_grid(n_steps: int, num_train_timesteps: int, floor: bool = False) -> np.ndarray:
    """n_steps timesteps 0 .. T−1, evenly spaced, ascending ints: rounded (Asyrp's `seq_inv`), or
    with `floor` InjectFusion's `int(s + 1e-6)` (its generation and replace grids)."""
    if n_steps < 2:
        raise ValueError(f"need at least 2 DDIM steps, got {n_steps}")
    points = np.linspace(0, 1, n_steps) * (num_train_timesteps - 1)
    if floor:
        return np.array([int(s + 1e-6) for s in points], dtype=np.int64)
    return np.round(points).astype(np.int64)


def alpha_bar(alphas_cumprod: torch.Tensor, t: int) -> torch.Tensor:
    """ᾱ_t, with ᾱ_{-1} = 1 (the step after the last one is x_0)."""
    return alphas_cumprod[t] if t >= 0 else torch.ones((), dtype=alphas_cumprod.dtype)


def ddim_step(x_t: torch.Tensor, eps_x0: torch.Tensor, eps_dir: torch.Tensor, a_t: torch.Tensor,
              a_next: torch.Tensor, eta: float = 0.0, dir_scale: float = 1.0,
              noise: torch.Tensor | None = None, clip_x0: bool = False) -> torch.Tensor:
    """One (asymmetric) DDIM step from timestep t to t_next, either direction; numbered as diffusers'
    `DDIMScheduler.step` (tests/test_diffusion_maths.py checks the parity).

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


def predict_eps(unet: nn.Module, x: torch.Tensor, timestep: torch.Tensor | int, a_t: torch.Tensor,
                prediction_type: str, guidance: Guidance | None = None) -> torch.Tensor:
    """ε_θ(x_t, t) in fp32, whatever the UNet predicts: the DDIM and DiffInject updates are written in ε.
    Under bf16/fp16 autocast (diffusion.precision) only the network's own arithmetic is rounded, never
    the DDIM update. An int timestep is broadcast over the batch. `guidance`: the class labels and
    guidance scale of a class-conditional UNet (diffusion/conditioning.py)."""
    if isinstance(timestep, int):
        timestep = torch.full((x.shape[0],), timestep, device=x.device, dtype=torch.long)
    out = guided_output(unet, x, timestep, guidance)
    return out if prediction_type == "epsilon" else eps_from_v(out, x, a_t)


@dataclass
class Inversion:
    """DDIM inversion of a batch: x_T and, when asked, x_t at every grid timestep."""

    x_T: torch.Tensor  # (B, C, H, W)
    timesteps: np.ndarray  # (n,) ascending; xs[i] is x_{timesteps[i]} on the inversion path
    xs: torch.Tensor | None = None  # (n, B, C, H, W): xs[0] = x_0, xs[-1] = x_T


@torch.no_grad()
def ddim_invert(unet: nn.Module, scheduler: DDPMScheduler, x0: torch.Tensor, n_steps: int,
                keep_path: bool = False, guidance: Guidance | None = None) -> Inversion:
    """Deterministic DDIM inversion (eta 0) from t = 0 up to t = T−1 on `n_steps` timesteps, with the
    noise schedule (`alphas_cumprod`) and `prediction_type` of the UNet's `scheduler`. keep_path keeps
    x_t at every grid timestep, from which any site's features can be recomputed
    (`sampler.capture_features`). A class-conditional UNet inverts under `guidance` (each image's own
    class, scale 1), else under the null class."""
    alphas_cumprod, prediction_type = scheduler.alphas_cumprod, checked_prediction_type(scheduler)
    grid = timestep_grid(n_steps, len(alphas_cumprod))
    x, xs = x0, [x0.float()]
    for t, t_next in zip(grid[:-1], grid[1:]):
        a_t, a_next = alpha_bar(alphas_cumprod, int(t)).to(x), alpha_bar(alphas_cumprod, int(t_next)).to(x)
        eps = predict_eps(unet, x, int(t), a_t, prediction_type, guidance)
        x = ddim_step(x, eps, eps, a_t, a_next)
        xs.append(x)
    return Inversion(x_T=x, timesteps=grid, xs=torch.stack(xs) if keep_path else None)


@torch.no_grad()
def ddim_generate(unet: nn.Module, scheduler: DDPMScheduler, x_T: torch.Tensor, n_steps: int,
                  guidance: Guidance | None = None) -> torch.Tensor:
    """Plain deterministic DDIM (eta 0) from x_T down to x_0 on the rounded `n_steps` grid: the inverse
    of `ddim_invert`, and what the injection sampler does with nothing injected."""
    alphas_cumprod, prediction_type = scheduler.alphas_cumprod, checked_prediction_type(scheduler)
    descending = [int(t) for t in timestep_grid(n_steps, len(alphas_cumprod))[::-1]]
    x = x_T
    for t, t_next in zip(descending, descending[1:] + [-1]):
        a_t, a_next = alpha_bar(alphas_cumprod, t).to(x), alpha_bar(alphas_cumprod, t_next).to(x)
        eps = predict_eps(unet, x, t, a_t, prediction_type, guidance)
        x = ddim_step(x, eps, eps, a_t, a_next)
    return x
