"""Where single-process inference and generation run, from `trainer.accelerator`."""

from __future__ import annotations

import ctypes
import functools
import os

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


# Lightning sets this at import so that CUDA availability checks go through NVML and never initialise
# CUDA before a fork. torch's Adam asks `torch.cuda.is_available()` on every step; through NVML that is
# a dlopen of libnvidia-ml, repeated on every call when the library is missing (~0.15 ms per step here,
# 4 % of an MLP training step on this CPU).
_NVML_CHECK_VAR = "PYTORCH_NVML_BASED_CUDA_CHECK"
_NVML_LIBRARY = "libnvidia-ml.so.1"


@functools.cache
def _nvml_loadable() -> bool:
    try:
        ctypes.CDLL(_NVML_LIBRARY)
    except OSError:
        return False
    return True


def skip_failing_nvml_probe() -> None:
    """Turn Lightning's NVML-based CUDA check off where NVML cannot load (machines without an NVIDIA
    driver). There torch's NVML path always fails and falls back to `cudaGetDeviceCount` anyway, so
    asking the CUDA runtime directly gives the same answer with the same fork safety, minus the failing
    dlopen on every optimizer step. Call after `import lightning` (which sets the variable)."""
    if os.environ.get(_NVML_CHECK_VAR) == "1" and not _nvml_loadable():
        os.environ[_NVML_CHECK_VAR] = "0"
