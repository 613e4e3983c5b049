"""On-disk cache of DDIM inversions (data/inversions/): safetensors files, so loading runs no pickle.

content.safetensors: x_T (N, C, H, W) float32, xs (n_steps, N, C, H, W) float32 (x_t on the inversion
                     path, from which `inject` recomputes the features of whichever site it injects),
                     ids, targets, proxy, timesteps
style.safetensors:   x_T, ids, targets, proxy
proxy is the biased classifier's prediction for the image: a bias proxy that needs no bias label, used
to pair contents and styles so the result conflicts. An older cache may hold hs (h at every step,
float16) instead of xs. x_T and xs stay float32: reconstruction error grows quickly with rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from diffinject.errors import DiffinjectError, first_line

CONTENT = "content.safetensors"
STYLE = "style.safetensors"
REQUIRED = ("x_T", "ids", "targets")


@dataclass
class InvertedSet:
    x_T: torch.Tensor  # (N, C, H, W) float32
    ids: torch.Tensor  # (N,) int64, manifest ids
    targets: torch.Tensor  # (N,) int64
    hs: torch.Tensor | None = None  # (n_steps, N, c, h, w)
    timesteps: np.ndarray | None = None  # (n_steps,)
    xs: torch.Tensor | None = None  # (n_steps, N, C, H, W): x_t on the inversion path at `timesteps`
    proxy: torch.Tensor | None = None  # (N,) int64: the biased classifier's predicted class


def save_inverted(data: InvertedSet, path: Path) -> None:
    tensors = {"x_T": data.x_T.float().contiguous(), "ids": data.ids, "targets": data.targets}
    if data.hs is not None:
        tensors["hs"] = data.hs.half().contiguous()
    if data.xs is not None:
        tensors["xs"] = data.xs.float().contiguous()
    if data.hs is not None or data.xs is not None:
        tensors["timesteps"] = torch.as_tensor(data.timesteps, dtype=torch.int64)
    if data.proxy is not None:
        tensors["proxy"] = data.proxy.long().contiguous()
    save_file(tensors, str(path))


def load_inverted(path: Path) -> InvertedSet:
    if not path.is_file():
        raise DiffinjectError(f"{path}: inversion cache not found (run `python -m diffinject invert` first)")
    try:
        t = load_file(str(path))
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise DiffinjectError(f"{path}: not a readable inversion cache ({first_line(exc)}; re-run `python -m diffinject invert`)") from exc
    missing = [key for key in REQUIRED if key not in t]
    if missing:
        raise DiffinjectError(f"{path}: inversion cache lacks {', '.join(missing)} (expected {', '.join(REQUIRED)}; "
                              "re-run `python -m diffinject invert`)")
    n = len(t["x_T"])
    if t["x_T"].ndim != 4 or len(t["ids"]) != n or len(t["targets"]) != n:
        raise DiffinjectError(f"{path}: x_T, ids and targets disagree on the number of images (re-run `python -m diffinject invert`)")
    return InvertedSet(
        x_T=t["x_T"], ids=t["ids"], targets=t["targets"],
        hs=t["hs"].float() if "hs" in t else None,
        timesteps=t["timesteps"].numpy() if "timesteps" in t else None,
        xs=t.get("xs"), proxy=t.get("proxy"),
    )
