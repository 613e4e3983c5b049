"""Sample grids of a prepared split: one row per class; in a biased split the last columns show
bias-conflicting examples (framed), so the shortcut is visible at a glance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

TILE_PAD = 2
LABEL_WIDTH = 18
CONFLICT_FRAME = (255, 255, 255)


def sample_grid(root: Path, manifest: pd.DataFrame, split: str, out: Path, per_class: int = 8,
                n_conflict: int = 2, seed: int = 0, tile: int = 28) -> None:
    """Write a PNG grid for `split`: `per_class` images per class, `n_conflict` of them conflicting
    when the split has such samples (train); tiles scaled to `tile` pixels."""
    rng = np.random.default_rng(seed)
    rows = manifest[manifest["split"] == split]
    classes = sorted(rows["target"].unique())
    step = tile + TILE_PAD
    canvas = Image.new("RGB", (LABEL_WIDTH + per_class * step, len(classes) * step), (40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    for r, target in enumerate(classes):
        of_class = rows[rows["target"] == target]
        aligned = of_class["aligned"].fillna(True).astype(bool)
        conflict = of_class[~aligned]
        take_conflict = conflict.sample(min(n_conflict, len(conflict)), random_state=rng.integers(1 << 31)) if split == "train" else conflict.iloc[:0]
        rest = of_class.drop(take_conflict.index)
        take_rest = rest.sample(min(per_class - len(take_conflict), len(rest)), random_state=rng.integers(1 << 31))
        draw.text((2, r * step + tile // 3), str(target), fill=(230, 230, 230))
        for c, (_, item) in enumerate(pd.concat([take_rest, take_conflict]).iterrows()):
            with Image.open(root / item["path"]) as img:
                thumb = img.convert("RGB").resize((tile, tile), Image.NEAREST)
            x, y = LABEL_WIDTH + c * step, r * step
            canvas.paste(thumb, (x + TILE_PAD // 2, y + TILE_PAD // 2))
            if not bool(item["aligned"] if pd.notna(item["aligned"]) else True):
                draw.rectangle([x, y, x + step - 1, y + step - 1], outline=CONFLICT_FRAME)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
