"""The class label as a condition of the DDPM (`diffusion.class_conditional`): a UNet2DModel with one
class embedding per label plus a null class, trained with label dropout (the null class stands in for
the label a fraction `diffusion.label_dropout` of the time), and classifier-free guidance at inference
(Ho & Salimans 2022):

    ε_s(x_t, y) = ε(x_t, ∅) + s · (ε(x_t, y) − ε(x_t, ∅))

s = 0 is the unconditional model (the null class), s = 1 the plain conditional one, s > 1 pushes the
image further toward y. Class labels only: no bias label is ever a condition.

A class-conditional UNet called without labels (the DDPM pipeline's samples, the probes, the fair
generator) is its unconditional self: `default_to_null_class` fills in the null class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def is_class_conditional(unet: nn.Module) -> bool:
    """Whether `unet` has a class embedding table (UNet2DModel's `num_class_embeds`)."""
    config = getattr(unet, "config", None)
    return getattr(config, "num_class_embeds", None) is not None and getattr(config, "class_embed_type", None) is None


def null_class(unet: nn.Module) -> int:
    """The label of 'no label': the last row of the class embedding table."""
    return int(unet.config.num_class_embeds) - 1


def default_to_null_class(unet: nn.Module) -> nn.Module:
    """On a class-conditional UNet, a call without `class_labels` gets the null class (a forward
    pre-hook; explicit labels win). Other UNets are returned untouched."""
    if is_class_conditional(unet) and not getattr(unet, "_null_class_hook", None):
        null = null_class(unet)

        def fill(module: nn.Module, args: tuple, kwargs: dict):
            if len(args) >= 3 or kwargs.get("class_labels") is not None:
                return None
            sample = args[0] if args else kwargs["sample"]
            return args, {**kwargs, "class_labels": torch.full((sample.shape[0],), null, device=sample.device, dtype=torch.long)}

        unet._null_class_hook = unet.register_forward_pre_hook(fill, with_kwargs=True)
    return unet


def drop_labels(labels: torch.Tensor, p: float, null: int) -> torch.Tensor:
    """Label dropout for classifier-free guidance: each label becomes the null class with probability p
    (torch's global generator, so a seeded, resumed run draws the same)."""
    if p <= 0:
        return labels
    dropped = torch.rand(labels.shape, device=labels.device) < p
    return torch.where(dropped, torch.full_like(labels, null), labels)


@dataclass(frozen=True)
class Guidance:
    """Condition every UNet call of a batch on `labels` (B,) with guidance scale `scale`."""

    labels: torch.Tensor
    scale: float = 1.0

    @property
    def doubles_batch(self) -> bool:
        """Whether a call runs the conditional and the null halves as one batch of 2B (s not 0 or 1)."""
        return self.scale not in (0.0, 1.0)


def guided_output(unet: nn.Module, x: torch.Tensor, timestep: torch.Tensor, guidance: Guidance | None) -> torch.Tensor:
    """The UNet's prediction (fp32) under `guidance`; None, or an unconditional UNet: the plain call.
    Scales 0 and 1 run one pass (the null class or the labels); others one pass of 2B, conditional
    half then null half, combined in the prediction's own space (ε and v are affine in each other at
    fixed x_t, so the result is the same ε)."""
    if guidance is None or not is_class_conditional(unet):
        return unet(x, timestep).sample.float()
    null = torch.full_like(guidance.labels, null_class(unet)).to(x.device)
    if guidance.scale == 0.0:
        return unet(x, timestep, class_labels=null).sample.float()
    labels = guidance.labels.to(x.device)
    if guidance.scale == 1.0:
        return unet(x, timestep, class_labels=labels).sample.float()
    both = unet(torch.cat([x, x]), torch.cat([timestep, timestep]), class_labels=torch.cat([labels, null])).sample.float()
    conditional, unconditional = both.chunk(2)
    return unconditional + guidance.scale * (conditional - unconditional)
