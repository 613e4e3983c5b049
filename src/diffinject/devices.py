"""Where inference and generation run, from `trainer.accelerator`, and the ranks of a multi-process
launch (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)."""

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
        if "LOCAL_RANK" not in os.environ:
            return torch.device("cuda")
        # one GPU per process under torchrun / Lightning's launcher (LOCAL_RANK), not all on GPU 0
        return torch.device("cuda", local_rank() % max(1, torch.cuda.device_count()))
    if accelerator in ("auto", "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# Lightning sets this at import so that CUDA availability checks go through NVML and never initialise
# CUDA before a fork. torch's Adam asks `torch.cuda.is_available()` on every step; through NVML that is
# a dlopen of libnvidia-ml, repeated on every call when the library is missing.
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


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def rank_and_world() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) of this process; (0, 1) when not launched by torchrun or Lightning."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def barrier() -> None:
    """Wait until every rank gets here. A gloo group (it runs on any machine, GPU or not) is joined on
    first use from torchrun's environment; a single process returns at once."""
    import torch.distributed as dist

    if rank_and_world()[1] == 1:
        return
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise DiffinjectError("WORLD_SIZE > 1 but MASTER_ADDR is not set: launch the ranks with torchrun")
        dist.init_process_group("gloo")
    dist.barrier()
