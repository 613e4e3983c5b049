"""A pool of extra images: a manifest of images (the synthetic set of the injection stage, or a
user's own folder), loaded whole, and which of its rows join a train set (a seeded draw, or even
repeats as JTT's up-weighting by copies)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from diffinject.data.tensors import ImageTensors, load_images
from diffinject.errors import DiffinjectError, first_line

# Columns a manifest of extra images (a pool) must have; paths are relative to the manifest's folder.
POOL_COLUMNS = ("id", "path", "target")


def read_image_table(path: str | Path) -> pd.DataFrame:
    """A manifest of extra images (.parquet or .csv) with at least the columns id, path, target."""
    path = Path(path)
    if not path.is_file():
        raise DiffinjectError(f"{path}: image manifest not found (expected a .parquet or .csv file with columns {', '.join(POOL_COLUMNS)})")
    try:
        if path.suffix == ".parquet":
            table = pd.read_parquet(path)
        elif path.suffix == ".csv":
            table = pd.read_csv(path)
        else:
            raise DiffinjectError(f"{path}: unknown manifest format (expected .parquet or .csv)")
    except (OSError, ValueError) as exc:
        raise DiffinjectError(f"{path}: not a readable manifest ({first_line(exc)})") from exc
    missing = [c for c in POOL_COLUMNS if c not in table.columns]
    if missing:
        raise DiffinjectError(f"{path}: manifest lacks columns {missing} (expected at least {list(POOL_COLUMNS)})")
    if not pd.api.types.is_integer_dtype(table["target"]) or table["target"].isna().any():
        raise DiffinjectError(f"{path}: column 'target' must hold integer class labels")
    return table


def load_pool(path: str | Path, num_classes: int) -> ImageTensors:
    """Every image of a pool manifest; targets must be classes of the prepared data (0..num_classes-1)."""
    path = Path(path)
    table = read_image_table(path)
    bad = table[(table["target"] < 0) | (table["target"] >= num_classes)]
    if not bad.empty:
        raise DiffinjectError(
            f"{path}: target {int(bad['target'].iloc[0])} of id {bad['id'].iloc[0]} is not a class of the prepared data (0..{num_classes - 1})"
        )
    return ImageTensors(
        images=load_images(path.parent, list(table["path"].astype(str)), confine_links=True),
        targets=torch.tensor(table["target"].to_numpy(dtype=np.int64)),
        ids=torch.tensor(_integer_ids(table["id"])),
        source=str(path),
    )


def _integer_ids(ids: pd.Series) -> np.ndarray:
    """Pool ids as int64 when they are integers; otherwise (e.g. string ids) the row numbers — pool ids
    only name images in messages, nothing joins on them."""
    if pd.api.types.is_integer_dtype(ids) and not ids.isna().any():
        return ids.to_numpy(dtype=np.int64)
    return np.arange(len(ids), dtype=np.int64)


@dataclass
class PoolDraw:
    """Which pool rows join the train set."""

    rows: torch.Tensor  # (n,) row indices into the pool
    requested: int  # round(ratio × |train|)
    replacement: bool  # True when the pool was smaller than `requested`


def draw_from_pool(pool_size: int, n_train: int, ratio: float, seed: int) -> PoolDraw:
    """round(ratio × n_train) pool rows, drawn with a generator seeded by `seed`: without replacement
    when the pool is large enough, otherwise with replacement (every draw independent)."""
    if ratio < 0:
        raise DiffinjectError(f"bias_conflict_ratio {ratio}: expected >= 0")
    requested = int(round(ratio * n_train))
    if pool_size == 0 or requested == 0:
        return PoolDraw(rows=torch.empty(0, dtype=torch.long), requested=requested, replacement=False)
    generator = torch.Generator().manual_seed(seed)
    if requested <= pool_size:
        rows = torch.randperm(pool_size, generator=generator)[:requested]
        return PoolDraw(rows=rows, requested=requested, replacement=False)
    rows = torch.randint(pool_size, (requested,), generator=generator)
    return PoolDraw(rows=rows, requested=requested, replacement=True)


def repeat_evenly(pool_size: int, n_train: int, ratio: float, seed: int) -> PoolDraw:
    """round(ratio × n_train) rows that cycle through a seeded permutation of the pool, so every pool row
    appears ⌊n / pool_size⌋ or ⌈n / pool_size⌉ times: JTT's up-weighting by copies (Liu et al. 2021),
    without the uneven counts a draw with replacement gives a pool of 30 images."""
    if ratio < 0:
        raise DiffinjectError(f"bias_conflict_ratio {ratio}: expected >= 0")
    requested = int(round(ratio * n_train))
    if pool_size == 0 or requested == 0:
        return PoolDraw(rows=torch.empty(0, dtype=torch.long), requested=requested, replacement=False)
    order = torch.randperm(pool_size, generator=torch.Generator().manual_seed(seed))
    rows = order.repeat((requested + pool_size - 1) // pool_size)[:requested]
    return PoolDraw(rows=rows, requested=requested, replacement=requested > pool_size)
