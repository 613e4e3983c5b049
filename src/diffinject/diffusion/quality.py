"""How good is the DDPM for injection? Samples from noise, and DDIM inversion -> reconstruction
fidelity (docs/design.md: the number to drive up in train_diffusion)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from diffinject.data.colour import nearest_palette_colour
from diffinject.diffusion.conditioning import Guidance
from diffinject.diffusion.ddim import ddim_generate, ddim_invert
from diffinject.diffusion.model import to_model_range, to_uint8


@torch.no_grad()
def sample_from_noise(unet: UNet2DModel, scheduler: DDPMScheduler, n: int, n_steps: int,
                      generator: torch.Generator) -> torch.Tensor:
    """n images (uint8, (n, C, H, W)) by ancestral DDPM sampling (diffusers' DDPMPipeline) on n_steps.

    Ancestral, not deterministic DDIM: on the default CPU model DDIM from noise at 20-50 steps gives
    washed-out shapes, while ancestral steps give coloured digits; its injected noise corrects the small
    model's errors (docs/diffusion_notes.md compares the step counts)."""
    pipeline = DDPMPipeline(unet=unet, scheduler=copy.deepcopy(scheduler))
    pipeline.set_progress_bar_config(desc="samples from noise", leave=False)
    images = pipeline(batch_size=n, generator=generator, num_inference_steps=n_steps, output_type="np").images
    return torch.from_numpy((images * 255).round().astype(np.uint8)).permute(0, 3, 1, 2)


@dataclass
class Reconstruction:
    images: torch.Tensor  # (N, C, H, W) uint8
    mse: float  # mean squared error in [-1, 1] units
    colour_kept: float | None  # fraction whose nearest LfF palette colour is unchanged (RGB data only)


@torch.no_grad()
def reconstruct(unet: UNet2DModel, scheduler: DDPMScheduler, images: torch.Tensor, n_inv_step: int,
                n_gen_step: int, labels: torch.Tensor | None = None) -> Reconstruction:
    """DDIM-invert uint8 images to x_T and generate them back (h_gamma 0, eta 0); a class-conditional
    UNet both ways under the images' `labels` (the null class without)."""
    x0 = to_model_range(images)
    guidance = None if labels is None else Guidance(labels)
    x_T = ddim_invert(unet, scheduler, x0, n_inv_step, guidance=guidance).x_T
    x_rec = ddim_generate(unet, scheduler, x_T, n_gen_step, guidance=guidance)
    rec = to_uint8(x_rec)
    mse = float((x_rec.clamp(-1, 1) - x0).pow(2).mean())
    colour_kept = None
    if images.shape[1] == 3:
        before = nearest_palette_colour(images.permute(0, 2, 3, 1).numpy())
        after = nearest_palette_colour(rec.permute(0, 2, 3, 1).numpy())
        colour_kept = float(np.mean(before == after))
    return Reconstruction(images=rec, mse=mse, colour_kept=colour_kept)
