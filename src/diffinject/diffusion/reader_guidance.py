"""Label-reader guidance on the denoised estimate (`injection.reader_guidance`): the second way the
field puts the class label into generation, for any DDPM, conditional or not.

On each generation step at t <= `injection.reader_t_max`, the DDIM estimate of x_0 is read by a label
reader — a classifier trained on class labels only (the pilot's reference, LfF by default), so it reads
no bias label — and both noise predictions are moved up the gradient of its log p(y | x_0), y the
synthetic label (classifier guidance, Dhariwal & Nichol 2021, on the clean estimate):

    x̂_0 = (x_t − √(1−ᾱ_t)·ε̃) / √ᾱ_t
    ε, ε̃ ← ε − s·√(1−ᾱ_t)/√ᾱ_t·∇_{x̂_0} log p(y | x̂_0),  likewise ε̃

which moves x̂_0 by s·(1−ᾱ_t)/ᾱ_t·∇ log p (the UNet's own Jacobian is left out, so a step costs one
reader forward and backward, not a second UNet pass). Late steps only: at large t the factor
(1−ᾱ_t)/ᾱ_t explodes and x̂_0 is still a blur. Measured in docs/label_in_generator.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ReaderGuidance:
    reader: nn.Module  # a classifier of [0, 1] images (the pipeline's networks), in eval mode
    scale: float
    t_max: int  # guide the generation steps at t <= t_max

    def applies(self, t: int) -> bool:
        return self.scale > 0 and t <= self.t_max

    def eps_shift(self, x_t: torch.Tensor, eps_x0: torch.Tensor, a_t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """What to subtract from each noise prediction at this step (formula above); shaped like x_t."""
        with torch.enable_grad(), torch.autocast(x_t.device.type, enabled=False):
            a_t = a_t.float()
            x0 = ((x_t.float() - (1 - a_t).sqrt() * eps_x0.float()) / a_t.sqrt()).detach().requires_grad_()
            log_p = torch.log_softmax(self.reader((x0.clamp(-1, 1) + 1) / 2), dim=1)
            picked = log_p.gather(1, labels.to(x0.device, torch.long)[:, None]).sum()
            grad, = torch.autograd.grad(picked, x0)
        return (self.scale * (1 - a_t).sqrt() / a_t.sqrt() * grad).to(eps_x0.dtype)
