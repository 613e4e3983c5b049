"""The injection operators (`injection.operator`): how a content image's features are mixed into the
features a UNet site produces while it generates the style image. Each is applied per tensor of a site,
weight gamma on the content:

    slerp          DiffStyle / InjectFusion: f_c' = f_c·‖f‖/‖f_c‖ (per sample), f ← slerp(f, f_c', γ)
    channel_stats  AdaIN-style (Huang & Belongie 2017): f keeps its spatial layout, its per-channel mean μ
                   and standard deviation σ move toward the content's: f ← (f − μ)/σ·σ* + μ* with
                   μ* = (1−γ)·μ + γ·μ_c and σ* = (1−γ)·σ + γ·σ_c
    channel_mean   the same with the standard deviation left alone: f ← f − μ + μ*

Adding an operator is one function and one entry of OPERATORS, here: the params check, the pilot's grid
parser and the site hooks (sites.py) read their names from OPERATORS. The DDPM's training never imports
this file, so a new operator re-runs only the stages that inject.
"""

from __future__ import annotations

from typing import Callable

import torch

from diffinject.diffusion.hspace import rescale_to, slerp

# Below this standard deviation a channel is constant (dead or flat) and its normalised pattern is noise.
_STD_EPS = 1e-5

Operator = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]  # (f, content, gamma) -> f mixed, fp32


def slerp_rescaled(f: torch.Tensor, content: torch.Tensor, gamma: float) -> torch.Tensor:
    """f (B, ...) slerped toward content (same shape), rescaled to f's norm per sample, by gamma."""
    if content.shape != f.shape:
        raise ValueError(f"content features have shape {tuple(content.shape)}, the site produced {tuple(f.shape)}")
    return slerp(f, rescale_to(content, f), gamma)


def channel_stats(f: torch.Tensor, content: torch.Tensor, gamma: float) -> torch.Tensor:
    """f (B, C, H, W) with its per-channel mean and std moved toward content's (B, C, H', W') by gamma."""
    mu, sd = f.mean((2, 3), keepdim=True), f.std((2, 3), keepdim=True)
    mu_c, sd_c = content.mean((2, 3), keepdim=True), content.std((2, 3), keepdim=True)
    target_mu, target_sd = torch.lerp(mu, mu_c, gamma), torch.lerp(sd, sd_c, gamma)
    normalised = (f - mu) / sd.clamp_min(_STD_EPS)
    return torch.where(sd > _STD_EPS, normalised * target_sd, torch.zeros_like(f)) + target_mu


def channel_mean(f: torch.Tensor, content: torch.Tensor, gamma: float) -> torch.Tensor:
    """f (B, C, H, W) with only its per-channel mean moved toward content's by gamma."""
    return f + gamma * (content.mean((2, 3), keepdim=True) - f.mean((2, 3), keepdim=True))


OPERATORS: dict[str, Operator] = {"slerp": slerp_rescaled, "channel_stats": channel_stats, "channel_mean": channel_mean}


def check_operator(operator: str) -> None:
    if operator not in OPERATORS:
        raise ValueError(f"injection operator {operator!r}: expected one of {', '.join(OPERATORS)}")


def mix(f: torch.Tensor, content: torch.Tensor, operator: str, gamma: float) -> torch.Tensor:
    """One tensor of a site with the content's mixed in, in fp32 (slerp's acos loses everything in bf16)."""
    check_operator(operator)
    out = OPERATORS[operator](f.float(), content.to(device=f.device, dtype=torch.float32), gamma)
    return out.to(f.dtype)
