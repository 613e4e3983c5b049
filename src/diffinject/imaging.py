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


LABEL_WIDTH = 330  # px of caption left of each row, enough for a candidate's name and score


def save_labelled_rows(rows: list[tuple[str, torch.Tensor]], path: str | Path, scale: int = GRID_SCALE) -> None:
    """One row of images per (caption, (n, C, H, W) uint8) pair, the caption written to its left."""
    from PIL import ImageDraw  # only the pilot's picture needs text

    strips = []
    for caption, images in rows:
        strip = make_grid(images.float(), nrow=len(images), padding=GRID_PAD, pad_value=64).to(torch.uint8)
        strip = Image.fromarray(strip.permute(1, 2, 0).numpy().squeeze()).convert("RGB")
        strip = strip.resize((strip.width * scale, strip.height * scale), Image.NEAREST)
        row = Image.new("RGB", (LABEL_WIDTH + strip.width, strip.height), (255, 255, 255))
        row.paste(strip, (LABEL_WIDTH, 0))
        ImageDraw.Draw(row).multiline_text((4, 4), caption, fill=(0, 0, 0))
        strips.append(row)
    picture = Image.new("RGB", (max(s.width for s in strips), sum(s.height for s in strips)), (255, 255, 255))
    top = 0
    for strip in strips:
        picture.paste(strip, (0, top))
        top += strip.height
    with atomic_file(path) as tmp:
        picture.save(tmp, format="PNG")
