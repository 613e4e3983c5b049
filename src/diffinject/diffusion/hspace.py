"""h-space: the output of the UNet's middle block (Kwon et al. 2023, "Diffusion models already have a
semantic latent space"). One hook object captures it or replaces it, for a whole batch.

Replacement follows DiffStyle / InjectFusion (Jeong et al. 2024), which DiffInject runs:
    h_c' = h_c · ‖h‖ / ‖h_c‖          (content h rescaled to the style h's norm, per sample)
    h    ← slerp(h, h_c', h_gamma)     (0 keeps the style path, 1 takes the content fully)
Skip connections are untouched, so they still come from the style path.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

# Below this angle (radians) between two h vectors slerp's sin(omega) denominator is unstable and
# the vectors are parallel anyway, so we interpolate linearly.
_PARALLEL_EPS = 1e-4


def slerp(a: torch.Tensor, b: torch.Tensor, gamma: float) -> torch.Tensor:
    """Spherical interpolation per sample between a and b (same shape (B, ...)), weight gamma on b."""
    a_flat, b_flat = a.flatten(1), b.flatten(1)  # (B, D)
    cos = (a_flat * b_flat).sum(1) / (a_flat.norm(dim=1) * b_flat.norm(dim=1)).clamp_min(1e-12)
    omega = torch.acos(cos.clamp(-1.0, 1.0))  # (B,)
    so = torch.sin(omega)
    parallel = omega < _PARALLEL_EPS
    w_a = torch.where(parallel, 1.0 - gamma, torch.sin((1.0 - gamma) * omega) / so.where(~parallel, 1.0))
    w_b = torch.where(parallel, torch.full_like(omega, gamma), torch.sin(gamma * omega) / so.where(~parallel, 1.0))
    return (w_a[:, None] * a_flat + w_b[:, None] * b_flat).view_as(a)


def rescale_to(h_c: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """h_c · ‖h‖ / ‖h_c‖, per sample."""
    norm_h = h.flatten(1).norm(dim=1)
    norm_c = h_c.flatten(1).norm(dim=1).clamp_min(1e-12)
    return h_c * (norm_h / norm_c).view(-1, *([1] * (h.dim() - 1)))


class HSpaceHook:
    """A forward hook on `unet.mid_block` that can capture h or inject a content h into it.

    with hook.capture():      unet(x, t)  -> hook.captured is h, (B, C, h, w)
    with hook.inject(h_c, g): unet(x, t)  -> mid-block output replaced by slerp(h, h_c', g)
    """

    def __init__(self, unet: nn.Module):
        if getattr(unet, "mid_block", None) is None:
            raise ValueError("unet has no `mid_block`; h-space injection needs a diffusers UNet2DModel-like network")
        self._handle = unet.mid_block.register_forward_hook(self._on_mid_block)
        self._capturing = False
        self._content: torch.Tensor | None = None
        self._gamma = 0.0
        self.captured: torch.Tensor | None = None

    def _on_mid_block(self, module: nn.Module, inputs: tuple, h: torch.Tensor) -> torch.Tensor | None:
        # h is bf16/fp16 under mixed precision (diffusion.precision); capture and slerp it in fp32
        # (acos of a cosine near 1 loses everything in bf16) and hand the decoder its own dtype back.
        if self._capturing:
            self.captured = h.detach().float()
        if self._content is None:
            return None
        content = self._content.to(device=h.device, dtype=torch.float32)
        if content.shape != h.shape:
            raise ValueError(f"content h has shape {tuple(content.shape)}, the mid block produced {tuple(h.shape)}")
        h32 = h.float()
        return slerp(h32, rescale_to(content, h32), self._gamma).to(h.dtype)

    @contextlib.contextmanager
    def capture(self) -> Iterator["HSpaceHook"]:
        self._capturing, self.captured = True, None
        try:
            yield self
        finally:
            self._capturing = False

    @contextlib.contextmanager
    def inject(self, content_h: torch.Tensor, gamma: float) -> Iterator["HSpaceHook"]:
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"h_gamma must be in [0, 1], got {gamma}")
        self._content, self._gamma = content_h, float(gamma)
        try:
            yield self
        finally:
            self._content = None

    def remove(self) -> None:
        self._handle.remove()
