"""Reader for the IDX format of MNIST-style datasets (LeCun et al.), plain or gzipped."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from diffinject.errors import DiffinjectError

# Third byte of the magic number: element type. MNIST-style files use unsigned bytes (0x08).
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Return the array stored in an IDX file; a bad header names the file and what was expected."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DiffinjectError(f"{path}: cannot read IDX file ({exc})") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DiffinjectError(
            f"{path}: bad IDX magic number {data[:4].hex() or '(empty)'} "
            "(expected 0x0000 then a type byte 08-0e and the number of dimensions)"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DiffinjectError(f"{path}: truncated IDX header (expected {ndim} dimension sizes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DiffinjectError(
            f"{path}: IDX body has {len(data) - header} bytes, expected {expected} for shape {shape}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
