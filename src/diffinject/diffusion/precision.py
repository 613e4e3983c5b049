"""Numeric precision of the DDPM (`diffusion.precision`), for its training and for every UNet call of
inversion, injection and sampling.

`auto` picks bf16 mixed precision where the hardware computes bf16 natively — a CUDA device that
supports it, or a CPU with AVX512-BF16 or AMX — and full fp32 elsewhere: on a CPU without those
instructions bf16 convolutions are emulated and slower than fp32. On a native-bf16 CPU a UNet call
and a training step are about twice as fast in bf16, and the reconstruction error stays where fp32's
is (docs/benchmarks.md, "Diffusion precision: bf16 against fp32").

Mixed precision means: weights stay fp32, autocast runs convolutions and matmuls in bf16, and every
UNet output is cast back to fp32 before the DDIM arithmetic and the h-space slerp (see `sampler.py`,
`hspace.py`), so only the network's own arithmetic is rounded.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from diffinject.errors import DiffinjectError

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
_AUTOCAST_DTYPE = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Does `device` compute bf16 in hardware?"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        # torch's kernels run at the capability it picked (ATEN_CPU_CAPABILITY can lower it, e.g. to
        # reproduce an AVX2-only machine): below AVX512, bf16 is emulated, whatever the CPU has
        if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
            return False
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise DiffinjectError(f"params 'diffusion.precision': got {precision!r}, expected one of {', '.join(PRECISIONS)}")


def resolve_precision(precision: str, device: torch.device) -> str:
    """`diffusion.precision` -> a Lightning precision string ('32-true', 'bf16-mixed' or '16-mixed')."""
    check_precision(precision)
    if precision == "auto":
        return "bf16-mixed" if native_bf16(device) else "32-true"
    return precision


def autocast(precision: str, device: torch.device) -> ContextManager:
    """The autocast context of a resolved precision for inference on `device` (no-op for 32-true)."""
    dtype = _AUTOCAST_DTYPE.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
