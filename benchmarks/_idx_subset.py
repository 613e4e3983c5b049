"""Shared by the benchmarks that run on a smaller slice of an IDX dataset (--quick)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path


def write_idx_subset(src: str, n: int, dest: Path) -> str:
    """Write the first n images of the IDX folder `src` (train and t10k in their proportion) to `dest`
    as a new IDX folder, and return its path."""
    from diffinject.data.sources import load_idx_folder

    grey = load_idx_folder(src)
    test = grey.official_test
    for part, mask in (("train", ~test), ("t10k", test)):
        k = int(n * mask.mean())
        imgs, labels = grey.images[mask][:k], grey.targets[mask][:k].astype("uint8")
        for kind, arr in (("images-idx3", imgs), ("labels-idx1", labels)):
            header = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
            (dest / f"{part}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + arr.tobytes(), 1))
    return str(dest)
