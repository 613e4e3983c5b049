"""Image sets in memory for classifier training: a split of a prepared folder, or a pool of extra images
given by any manifest of images (the synthetic set of the injection stage, or a user's own folder).

Images stay uint8 (N, C, H, W) in memory — 4,000 Colored-MNIST digits are 9 MB, Fashion-MNIST's
60,000 are 141 MB — and become floats on the device, inside the LightningModule. Batches are
(images, targets, index), `index` being the row in the set (LfF keeps a per-sample loss EMA by it).
Nothing here exposes the `bias` / `aligned` columns: training never sees them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Sequence

import lightning
import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from diffinject.data.manifest import MANIFEST_NAME, SPLITS, read_manifest
from diffinject.errors import DiffinjectError, first_line

# PNG decoding releases the GIL inside zlib, so two threads keep both cores busy.
DECODE_THREADS = 2
# Validation batch = this × the training batch: inference holds no activations for backward.
EVAL_BATCH_FACTOR = 2
# Columns a manifest of extra images (a pool) must have; paths are relative to the manifest's folder.
POOL_COLUMNS = ("id", "path", "target")


@dataclass
class ImageTensors:
    """A set of images with class labels, in memory."""

    images: torch.Tensor  # (N, C, H, W) uint8
    targets: torch.Tensor  # (N,) int64
    ids: torch.Tensor  # (N,) int64, the manifest ids
    source: str  # where the set came from, for messages

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def take(self, rows: torch.Tensor | np.ndarray) -> "ImageTensors":
        rows = torch.as_tensor(rows, dtype=torch.long)
        return ImageTensors(self.images[rows], self.targets[rows], self.ids[rows], self.source)


def concat(first: ImageTensors, second: ImageTensors) -> ImageTensors:
    """`first` followed by `second`; both must hold images of the same shape."""
    if len(second) and first.shape != second.shape:
        raise DiffinjectError(
            f"{second.source}: images are {second.shape} (C, H, W), expected {first.shape} like {first.source}"
        )
    return ImageTensors(
        torch.cat([first.images, second.images]),
        torch.cat([first.targets, second.targets]),
        torch.cat([first.ids, second.ids]),
        f"{first.source} + {second.source}",
    )


def _decode(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))  # (H, W, 3)
    except FileNotFoundError as exc:
        raise DiffinjectError(f"{path}: image listed in the manifest not found") from exc
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise DiffinjectError(f"{path}: not a readable image ({exc})") from exc


def load_images(root: Path, rel_paths: Sequence[str]) -> torch.Tensor:
    """Decode `root / p` for every p into one (N, 3, H, W) uint8 tensor; every image must have the
    size of the first. Each image is written straight into the preallocated result, so the peak is the
    result plus a few images (a list of arrays then a stack would hold the set three times)."""
    for p in rel_paths:
        if PurePosixPath(p).is_absolute() or PureWindowsPath(p).is_absolute() or ".." in PurePosixPath(p).parts:
            # a manifest names files inside its own folder: never one elsewhere on the machine
            raise DiffinjectError(f"{root}: manifest path {p!r} leaves the folder (expected a path relative to it, without '..')")
    files = [root / p for p in rel_paths]
    if not files:
        return torch.empty((0, 3, 0, 0), dtype=torch.uint8)
    first = _decode(files[0])  # (H, W, 3)
    out = torch.empty((len(files), first.shape[2], first.shape[0], first.shape[1]), dtype=torch.uint8)
    out_np = out.numpy()  # shares memory with `out`

    def fill(i: int) -> None:
        array = first if i == 0 else _decode(files[i])
        if array.shape != first.shape:
            raise DiffinjectError(f"{files[i]}: image is {array.shape[1]}x{array.shape[0]}, expected {first.shape[1]}x{first.shape[0]} like {files[0]}")
        out_np[i] = array.transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)

    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        list(pool.map(fill, range(len(files))))
    return out


def load_split(prepared: str | Path, split: str, manifest: pd.DataFrame | None = None) -> ImageTensors:
    """Images, targets and ids of one split of a prepared folder, in manifest order."""
    if split not in SPLITS:
        raise DiffinjectError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    prepared = Path(prepared)
    manifest = read_manifest(prepared) if manifest is None else manifest
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise DiffinjectError(f"{prepared / MANIFEST_NAME}: split '{split}' has no images (expected at least one)")
    return ImageTensors(
        images=load_images(prepared, list(rows["path"])),
        targets=torch.tensor(rows["target"].to_numpy(dtype=np.int64)),
        ids=torch.tensor(rows["id"].to_numpy(dtype=np.int64)),
        source=f"{prepared}[{split}]",
    )


def num_classes_of(manifest: pd.DataFrame) -> int:
    """Classes are 0..C-1; C is one more than the largest target."""
    return int(manifest["target"].max()) + 1


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
        images=load_images(path.parent, list(table["path"].astype(str))),
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


class IndexedImages(Dataset):
    """(image uint8 (C, H, W), target, index) per row; `__getitems__` fetches a whole batch with one
    tensor index instead of collating a list of samples."""

    def __init__(self, data: ImageTensors):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.data.images[i], self.data.targets[i], torch.tensor(i)

    def __getitems__(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(rows, dtype=torch.long)
        # index_select copies whole rows; advanced indexing (images[index]) goes through the generic
        # gather kernel, 15x slower for a batch of 256 uint8 images (~180 µs, 5 % of an MLP step)
        images = self.data.images.index_select(0, index)
        return images, self.data.targets.index_select(0, index), index  # (B, C, H, W), (B,), (B,)


def _batch_as_is(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The collate function for `IndexedImages.__getitems__`, which already returns a batch."""
    return batch


def make_loader(data: ImageTensors, batch_size: int, shuffle: bool, seed: int | None = None) -> DataLoader:
    """A DataLoader over in-memory images, in the main process (workers would only add IPC: the data
    is already decoded); shuffling draws from its own generator seeded by `seed`."""
    generator = torch.Generator().manual_seed(seed) if shuffle and seed is not None else None
    return DataLoader(
        IndexedImages(data), batch_size=batch_size, shuffle=shuffle, generator=generator,
        collate_fn=_batch_as_is, num_workers=0,
    )


class ImageDataModule(lightning.LightningDataModule):
    """Train (shuffled, seeded) and validation (in order) loaders over in-memory image sets; validation
    batches are EVAL_BATCH_FACTOR times larger (no gradients to keep), so fewer steps per epoch."""

    def __init__(self, train: ImageTensors, valid: ImageTensors, batch_size: int, seed: int):
        super().__init__()
        self.train, self.valid = train, valid
        self.batch_size = batch_size
        self.eval_batch_size = EVAL_BATCH_FACTOR * batch_size
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.train, self.batch_size, shuffle=True, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.valid, self.eval_batch_size, shuffle=False)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # On the CPU the batch is already where it trains: skip Lightning's generic mover, which walks
        # the batch's structure and re-checks every tensor (~15 µs per step, ~0.4 % of an MLP step).
        if isinstance(batch, tuple) and all(isinstance(t, torch.Tensor) and t.device == device for t in batch):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)


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
