"""Where single-process inference and generation run, from `trainer.accelerator`."""

from __future__ import annotations

import torch

from diffinject.errors import DiffinjectError

_ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def inference_device(accelerator: str) -> torch.device:
    """cuda when asked for (or `auto` and present), mps likewise, else the CPU."""
    if accelerator not in _ACCELERATORS:
        raise DiffinjectError(f"params 'trainer.accelerator': got {accelerator!r}, expected one of {', '.join(_ACCELERATORS)}")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise DiffinjectError(f"params 'trainer.accelerator': {accelerator!r} asked for, but no CUDA device is visible")
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator in ("auto", "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
