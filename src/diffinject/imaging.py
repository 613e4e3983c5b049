"""Image grids for plots (sample grids, content | style | injected rows), written atomically."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid

from diffinject.fsutil import atomic_file

GRID_PAD = 2
GRID_SCALE = 2  # nearest-neighbour upscaling so 28-px digits are visible in the DVC / MLflow viewers


def save_grid(images: torch.Tensor, path: str | Path, nrow: int, scale: int = GRID_SCALE) -> None:
    """images: (N, C, H, W) uint8, laid out `nrow` per row, saved as PNG."""
    grid = make_grid(images.float(), nrow=nrow, padding=GRID_PAD, pad_value=64).to(torch.uint8)  # (C, H', W')
    picture = Image.fromarray(grid.permute(1, 2, 0).numpy().squeeze())
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    with atomic_file(path) as tmp:
        picture.save(tmp, format="PNG")
