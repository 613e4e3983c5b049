"""Injection sites of a UNet2DModel, and the hooks that capture a content image's features there or mix
them in with an operator (operators.py).

Sites (names are the params' `injection.site` values):
    h     the output of the middle block (Kwon et al. 2023's h-space), (B, C, h, w)
    up0   the skip connections the first (lowest-resolution) up block receives, a tuple of maps
    up1   ... the second up block's, and so on up to the last (full resolution)

One `SiteHook` object captures the features of a set of sites or replaces them, for a whole batch.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from diffinject.diffusion.operators import check_operator, mix
from diffinject.errors import DiffinjectError

H_SITE = "h"

Features = dict[str, tuple[torch.Tensor, ...]]  # site -> its tensors (h: one; an up block's skips: several)


def site_names(unet: nn.Module) -> tuple[str, ...]:
    """Every site of `unet`: h, then up0 .. up{n-1} (up0 = lowest resolution)."""
    return _names(len(unet.up_blocks))


def saved_site_names(diffusion: Path) -> tuple[str, ...]:
    """The sites of the DDPM saved in `diffusion` (a diffusers folder), from its config alone."""
    for config in (diffusion / "unet" / "config.json", diffusion / "config.json"):
        if config.is_file():
            return _names(len(json.loads(config.read_text()).get("up_block_types", ())))
    raise DiffinjectError(f"{diffusion}: no unet/config.json (run `dvc repro train_diffusion`)")


def _names(n_up_blocks: int) -> tuple[str, ...]:
    return (H_SITE, *(f"up{i}" for i in range(n_up_blocks)))


def check_sites(sites: Sequence[str], unet: nn.Module) -> None:
    known = site_names(unet)
    for site in sites:
        if site not in known:
            raise ValueError(f"injection site {site!r}: expected one of {', '.join(known)}")
    if not sites:
        raise ValueError(f"no injection site given: expected some of {', '.join(known)}")


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
        check_operator(operator)
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
