"""What the `invert` stage inverts, and the batched DDIM inversion itself: style images drawn from the
training samples the biased model finds easiest (no bias label read), and the inversions of a set of
rows (x_T, and for contents x_t at every grid step, from which `inject` recomputes any site)."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDPMScheduler
from torch import nn
from tqdm import tqdm

from diffinject.data.tensors import ImageTensors
from diffinject.diffusion.conditioning import Guidance
from diffinject.diffusion.ddim import ddim_invert
from diffinject.diffusion.inversion_store import InvertedSet
from diffinject.diffusion.model import to_model_range


def choose_styles(losses: np.ndarray, targets: np.ndarray, per_class: int, easiest_fraction: float,
                  seed: int) -> np.ndarray:
    """Sorted rows of `per_class` style images per class (fewer where the class has fewer), drawn
    without replacement, seeded, from that class's `easiest_fraction` of lowest `losses`."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in np.unique(targets):
        of_class = np.flatnonzero(targets == label)
        n_easiest = max(1, int(len(of_class) * easiest_fraction))
        easiest = of_class[np.argsort(losses[of_class], kind="stable")[:n_easiest]]
        rows.append(rng.choice(easiest, size=min(per_class, len(easiest)), replace=False))
    return np.sort(np.concatenate(rows))


@torch.no_grad()
def invert_rows(unet: nn.Module, scheduler: DDPMScheduler, data: ImageTensors, rows: np.ndarray, n_steps: int,
                keep_path: bool, batch_size: int, device: torch.device, proxy: np.ndarray | None = None) -> InvertedSet:
    """DDIM inversions of `data`'s `rows` in batches of `batch_size` (each image's inversion is
    independent of its batch); keep_path keeps x_t at every grid timestep (contents). `proxy`: a label
    per row of `data` stored beside each inversion (the biased model's prediction). A class-conditional
    UNet inverts each image under its own class."""
    x_Ts, paths, timesteps = [], [], None
    kind = "content" if keep_path else "style"
    for start in tqdm(range(0, len(rows), batch_size), desc=f"invert: {kind} batches", unit="batch"):
        chunk = torch.as_tensor(rows[start:start + batch_size])
        inv = ddim_invert(unet, scheduler, to_model_range(data.images[chunk]).to(device), n_steps,
                          keep_path=keep_path, guidance=Guidance(data.targets[chunk]))
        x_Ts.append(inv.x_T.cpu())
        if keep_path:
            paths.append(inv.xs.cpu())  # (n_steps, B, C, H, W)
            timesteps = inv.timesteps
    return InvertedSet(
        x_T=torch.cat(x_Ts), ids=data.ids[rows], targets=data.targets[rows],
        xs=torch.cat(paths, dim=1) if keep_path else None, timesteps=timesteps,
        proxy=None if proxy is None else torch.as_tensor(proxy[rows], dtype=torch.int64),
    )
