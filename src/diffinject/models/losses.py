"""Per-sample classification losses: cross-entropy and Generalized Cross-Entropy (GCE).

GCE (Zhang & Sabuncu 2018), with p_y the softmax probability of the true class:

    GCE(p, y) = (1 − p_y^q) / q                          (formula; q → 0 gives CE, q = 1 gives MAE)
    ∂GCE/∂z   = p_y^q · ∂CE/∂z                           (since ∂p_y/∂z = p_y · ∂log p_y/∂z)

LfF's `GeneralizedCELoss` and DiffInject train with the "gradient form"

    CE · sg(p_y)^q · q                                   (sg = stop-gradient, `.detach()`)

whose gradient is q · p_y^q · ∂CE/∂z: the formula's direction, scaled by the constant q. We train with
the gradient form, as that code does (under Adam a constant loss scale changes almost nothing); both are
here so tests can pin one against the other. Either way, samples the model already finds easy (p_y
near 1) dominate, so a GCE model learns the easy shortcut (colour) and keeps a high loss on
bias-conflicting samples — what mining relies on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffinject.errors import DiffinjectError

LOSSES = ("ce", "gce")
# GCE's exponent in LfF and DiffInject.
DEFAULT_GCE_Q = 0.7


def true_class_prob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """p_y: softmax probability of the target class, (B,)."""
    return F.softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)


def gce_formula(logits: torch.Tensor, targets: torch.Tensor, q: float = DEFAULT_GCE_Q) -> torch.Tensor:
    """(1 − p_y^q) / q per sample, (B,)."""
    return (1 - true_class_prob(logits, targets) ** q) / q


def gce_loss(logits: torch.Tensor, targets: torch.Tensor, q: float = DEFAULT_GCE_Q) -> torch.Tensor:
    """The training form, CE · sg(p_y)^q · q per sample, (B,) (LfF `GeneralizedCELoss`)."""
    ce = F.cross_entropy(logits, targets, reduction="none")
    p_y = torch.exp(-ce).detach()  # = softmax(logits)[y], without a second softmax
    return ce * p_y**q * q


def per_sample_loss(name: str, logits: torch.Tensor, targets: torch.Tensor, gce_q: float = DEFAULT_GCE_Q) -> torch.Tensor:
    """Loss `name` (ce | gce) per sample, (B,)."""
    if name == "ce":
        return F.cross_entropy(logits, targets, reduction="none")
    if name == "gce":
        return gce_loss(logits, targets, gce_q)
    raise DiffinjectError(f"loss {name!r}: expected one of {', '.join(LOSSES)}")
