"""Image sets in memory for classifier training: `ImageTensors`, and a split of a prepared folder
decoded into one (a pool of extra images is `data.pool`, the loaders over a set `data.loaders`).

Images stay uint8 (N, C, H, W) in memory — 4,000 Colored-MNIST digits are 9 MB, Fashion-MNIST's
60,000 are 141 MB — and become floats on the device, inside the LightningModule. Nothing here exposes
the `bias` / `aligned` columns: training never sees them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from diffinject.data.links import refuse_links_leaving
from diffinject.data.manifest import MANIFEST_NAME, SPLITS, read_manifest
from diffinject.errors import DiffinjectError

# PNG decoding releases the GIL inside zlib, so two threads keep both cores busy.
DECODE_THREADS = 2


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


def load_images(root: Path, rel_paths: Sequence[str], confine_links: bool = False) -> torch.Tensor:
    """Decode `root / p` for every p into one (N, 3, H, W) uint8 tensor; every image must have the
    size of the first. Each image is written straight into the preallocated result, so the peak is the
    result plus a few images (a list of arrays then a stack would hold the set three times).
    `confine_links`: refuse an image that is a link leaving `root` (a pool; a prepared folder may link
    its splits elsewhere)."""
    for p in rel_paths:
        if PurePosixPath(p).is_absolute() or PureWindowsPath(p).is_absolute() or ".." in PurePosixPath(p).parts:
            # a manifest names files inside its own folder: never one elsewhere on the machine
            raise DiffinjectError(f"{root}: manifest path {p!r} leaves the folder (expected a path relative to it, without '..')")
    files = [root / p for p in rel_paths]
    if confine_links:
        refuse_links_leaving(root, files)
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
