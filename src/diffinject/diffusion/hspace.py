"""h-space maths: the output of the UNet's middle block (Kwon et al. 2023, "Diffusion models already have a
semantic latent space") is mixed with a content image's h as DiffStyle / InjectFusion (Jeong et al.
2024), which DiffInject runs, do it (the hook that applies it, at h or another site, is sites.SiteHook):
    h_c' = h_c · ‖h‖ / ‖h_c‖          (content h rescaled to the style h's norm, per sample)
    h    ← slerp(h, h_c', h_gamma)     (0 keeps the style path, 1 takes the content fully)
"""

from __future__ import annotations

import torch

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
