"""Injection sites of a UNet2DModel and the operators that mix a content image's features into them.

Sites (names are the params' `injection.site` values):
    h     the output of the middle block (Kwon et al. 2023's h-space), (B, C, h, w)
    up0   the skip connections the first (lowest-resolution) up block receives, a tuple of maps
    up1   ... the second up block's, and so on up to the last (full resolution)

Operators (`injection.operator`), applied per tensor of a site, weight gamma on the content:
    slerp          DiffStyle / InjectFusion: f_c' = f_c·‖f‖/‖f_c‖ (per sample), f ← slerp(f, f_c', γ)
    channel_stats  AdaIN-style (Huang & Belongie 2017): f keeps its spatial layout, its per-channel mean μ
                   and standard deviation σ move toward the content's: f ← (f − μ)/σ·σ* + μ* with
                   μ* = (1−γ)·μ + γ·μ_c and σ* = (1−γ)·σ + γ·σ_c
    channel_mean   the same with the standard deviation left alone: f ← f − μ + μ*

One `SiteHook` object captures the features of a set of sites or replaces them, for a whole batch.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from diffinject.diffusion.hspace import rescale_to, slerp
from diffinject.diffusion.injection_params import OPERATORS

H_SITE = "h"
# Below this standard deviation a channel is constant (dead or flat) and its normalised pattern is noise.
_STD_EPS = 1e-5

Features = dict[str, tuple[torch.Tensor, ...]]  # site -> its tensors (h: one; an up block's skips: several)


def site_names(unet: nn.Module) -> tuple[str, ...]:
    """Every site of `unet`: h, then up0 .. up{n-1} (up0 = lowest resolution)."""
    return (H_SITE, *(f"up{i}" for i in range(len(unet.up_blocks))))


def check_sites(sites: Sequence[str], unet: nn.Module) -> None:
    known = site_names(unet)
    for site in sites:
        if site not in known:
            raise ValueError(f"injection site {site!r}: expected one of {', '.join(known)}")
    if not sites:
        raise ValueError(f"no injection site given: expected some of {', '.join(known)}")


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


def mix(f: torch.Tensor, content: torch.Tensor, operator: str, gamma: float) -> torch.Tensor:
    """One tensor of a site with the content's mixed in, in fp32 (slerp's acos loses everything in bf16)."""
    f32, c32 = f.float(), content.to(device=f.device, dtype=torch.float32)
    if operator == "slerp":
        if c32.shape != f32.shape:
            raise ValueError(f"content features have shape {tuple(c32.shape)}, the site produced {tuple(f32.shape)}")
        out = slerp(f32, rescale_to(c32, f32), gamma)
    elif operator == "channel_stats":
        out = channel_stats(f32, c32, gamma)
    elif operator == "channel_mean":
        out = channel_mean(f32, c32, gamma)
    else:
        raise ValueError(f"injection operator {operator!r}: expected one of {', '.join(OPERATORS)}")
    return out.to(f.dtype)


class SiteHook:
    """Forward hooks on a UNet2DModel's mid block and up blocks.

    with hook.capture(sites):                 unet(x, t) -> hook.captured[site] = tuple of fp32 tensors
    with hook.inject(content, operator, g):   unet(x, t) -> each site in `content` mixed with its tensors
    """

    def __init__(self, unet: nn.Module):
        if getattr(unet, "mid_block", None) is None or getattr(unet, "up_blocks", None) is None:
            raise ValueError("unet has no `mid_block` / `up_blocks`; site injection needs a diffusers UNet2DModel-like network")
        self.sites = site_names(unet)
        self._handles = [unet.mid_block.register_forward_hook(self._on_mid_block)]
        for i, block in enumerate(unet.up_blocks):
            self._handles.append(block.register_forward_pre_hook(self._make_up_hook(f"up{i}"), with_kwargs=True))
        self._capture: frozenset[str] = frozenset()
        self._content: Features = {}
        self._operator, self._gamma = "slerp", 0.0
        self.captured: Features = {}

    def _process(self, site: str, tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        if site in self._capture:
            self.captured[site] = tuple(t.detach().float() for t in tensors)
        content = self._content.get(site)
        if content is None:
            return None
        if len(content) != len(tensors):
            raise ValueError(f"site {site}: content has {len(content)} tensors, the UNet gives {len(tensors)}")
        return tuple(mix(f, c, self._operator, self._gamma) for f, c in zip(tensors, content))

    def _on_mid_block(self, module: nn.Module, inputs: tuple, h: torch.Tensor) -> torch.Tensor | None:
        out = self._process(H_SITE, (h,))
        return None if out is None else out[0]

    def _make_up_hook(self, site: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            # UNet2DModel calls up blocks as block(sample, res_samples, emb); accept the keyword form too
            if "res_hidden_states_tuple" in kwargs:
                out = self._process(site, tuple(kwargs["res_hidden_states_tuple"]))
                return None if out is None else (args, {**kwargs, "res_hidden_states_tuple": out})
            out = self._process(site, tuple(args[1]))
            return None if out is None else ((args[0], out, *args[2:]), kwargs)

        return hook

    @contextlib.contextmanager
    def capture(self, sites: Sequence[str]) -> Iterator["SiteHook"]:
        self._capture, self.captured = frozenset(sites), {}
        try:
            yield self
        finally:
            self._capture = frozenset()

    @contextlib.contextmanager
    def inject(self, content: Features, operator: str, gamma: float) -> Iterator["SiteHook"]:
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"injection gamma must be in [0, 1], got {gamma}")
        if operator not in OPERATORS:
            raise ValueError(f"injection operator {operator!r}: expected one of {', '.join(OPERATORS)}")
        unknown = set(content) - set(self.sites)
        if unknown:
            raise ValueError(f"injection site {sorted(unknown)[0]!r}: expected one of {', '.join(self.sites)}")
        self._content, self._operator, self._gamma = content, operator, float(gamma)
        try:
            yield self
        finally:
            self._content = {}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
