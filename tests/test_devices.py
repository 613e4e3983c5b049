"""Device helpers. `inference_device` is checked on simulated hosts (torch's CUDA and MPS probes patched),
so it is tested, and can fail, on a CPU-only CI; the NVML probe is skipped only where NVML cannot load;
and the machine at hand is checked for real: CPU only here, CUDA under the `gpu` marker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from diffinject import devices
from diffinject.errors import DiffinjectError

VAR = "PYTORCH_NVML_BASED_CUDA_CHECK"
HAS_CUDA = torch.cuda.is_available()
HAS_MPS = torch.backends.mps.is_available()


@pytest.fixture
def host(monkeypatch):
    """host(cuda=..., mps=...): make torch report those accelerators, whatever this machine has."""

    def simulate(cuda: bool = False, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return simulate


@pytest.mark.parametrize(
    ("cuda", "mps", "accelerator", "expected"),
    [
        (False, False, "auto", "cpu"),
        (False, False, "cpu", "cpu"),
        (True, False, "auto", "cuda"),
        (True, False, "gpu", "cuda"),  # Lightning's name and torch's name mean the same device
        (True, False, "cuda", "cuda"),
        (True, False, "cpu", "cpu"),  # asked for the CPU: a GPU host does not override it
        (False, True, "auto", "mps"),
        (False, True, "mps", "mps"),
        (False, True, "cpu", "cpu"),
        (True, True, "auto", "cuda"),  # auto prefers CUDA over MPS
    ],
)
def test_inference_device_on_simulated_hosts(host, cuda, mps, accelerator, expected):
    host(cuda=cuda, mps=mps)
    assert devices.inference_device(accelerator) == torch.device(expected)


def test_each_torchrun_rank_takes_its_own_gpu(host, monkeypatch):
    host(cuda=True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert devices.inference_device("auto") == torch.device("cuda", 1)  # not every rank on GPU 0


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_asking_for_cuda_without_it_names_the_key(host, accelerator):
    host(cuda=False, mps=True)  # not even another accelerator stands in for a requested GPU
    with pytest.raises(DiffinjectError, match=rf"params 'trainer.accelerator': '{accelerator}' asked for, but no CUDA device"):
        devices.inference_device(accelerator)


@pytest.mark.parametrize("accelerator", ["tpu", "hpu"])  # Lightning accelerators this helper does not run on
def test_an_unknown_accelerator_names_the_key_and_the_choices(host, accelerator):
    host(cuda=True)  # refused before any probe: the same answer on every host
    with pytest.raises(DiffinjectError, match=rf"params 'trainer.accelerator': got '{accelerator}', expected one of auto, cpu, gpu, cuda, mps"):
        devices.inference_device(accelerator)


@pytest.mark.parametrize(
    ("before", "nvml_loads", "after"),
    [
        ("1", False, "0"),  # Lightning's setting on a machine without NVIDIA's driver: ask the CUDA runtime
        ("1", True, "1"),  # NVML present: keep Lightning's fork-safe check
        (None, False, None),  # the user's or torch's default stays as it is
        ("0", False, "0"),
    ],
)
def test_skip_failing_nvml_probe(monkeypatch, before, nvml_loads, after):
    if before is None:
        monkeypatch.delenv(VAR, raising=False)
    else:
        monkeypatch.setenv(VAR, before)
    monkeypatch.setattr(devices, "_nvml_loadable", lambda: nvml_loads)
    devices.skip_failing_nvml_probe()
    assert os.environ.get(VAR) == after


@pytest.fixture
def fresh_nvml_answer():
    """`_nvml_loadable` is cached for the process: forget its answer before and after a test that fakes it."""
    devices._nvml_loadable.cache_clear()
    yield
    devices._nvml_loadable.cache_clear()


@pytest.mark.parametrize("loads", [True, False])
def test_nvml_loadable_is_a_dlopen_of_the_driver_library(monkeypatch, fresh_nvml_answer, loads):
    opened = []

    def cdll(name):
        opened.append(name)
        if not loads:
            raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(devices.ctypes, "CDLL", cdll)
    assert devices._nvml_loadable() is loads
    assert devices._nvml_loadable() is loads and opened == ["libnvidia-ml.so.1"]  # asked once, then cached


@pytest.mark.slow
def test_lightning_sets_the_variable_that_the_probe_skip_turns_off():
    """skip_failing_nvml_probe assumes `import lightning` sets the NVML check on; were that to stop, the
    helper would silently do nothing. A fresh interpreter, since this one imported Lightning long ago."""
    code = (f"import os; os.environ.pop({VAR!r}, None); import lightning; print(os.environ.get({VAR!r}))\n"
            f"from diffinject import devices; devices.skip_failing_nvml_probe(); print(os.environ.get({VAR!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "1" if devices._nvml_loadable() else "0"]


@pytest.mark.skipif(HAS_CUDA or HAS_MPS, reason="needs a host without CUDA and MPS")
@pytest.mark.parametrize("nvml_check", ["1", "0"])
def test_this_cpu_host_runs_inference_on_the_cpu(monkeypatch, nvml_check):
    """torch's real probes, through NVML (Lightning's setting) and through the CUDA runtime: no GPU either way."""
    monkeypatch.setenv(VAR, nvml_check)
    assert torch.cuda.is_available() is False
    assert devices.inference_device("auto") == torch.device("cpu")
    with pytest.raises(DiffinjectError, match="no CUDA device is visible"):
        devices.inference_device("gpu")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("nvml_check", ["1", "0"])
def test_this_gpu_host_runs_inference_on_cuda(monkeypatch, nvml_check):
    """The NVML answer and the CUDA runtime's agree on a real GPU, and the chosen device computes."""
    monkeypatch.setenv(VAR, nvml_check)
    assert torch.cuda.is_available() and torch.cuda.device_count() >= 1
    device = devices.inference_device("auto")
    assert device == torch.device("cuda") and devices.inference_device("gpu") == device
    x = torch.arange(4.0, device=device)
    assert x.device.type == "cuda" and (x * 2).sum().item() == 12.0


def test_trainer_flushes_denormals_while_it_fits_only():
    """`trainer.flush_denormals` reaches the CPU while `fit` runs (a subnormal times 1 is 0) and is
    undone after it; inference and flush_denormals: false add no flushing."""
    from diffinject.models.trainer import FlushDenormals, TrainerConfig, build_trainer

    subnormal = torch.tensor([1e-39], dtype=torch.float32)
    if not torch.set_flush_denormal(False):  # returns whether the CPU supports the flags
        pytest.skip("this CPU cannot flush denormals")
    has = lambda trainer: any(isinstance(cb, FlushDenormals) for cb in trainer.callbacks)  # noqa: E731
    on = build_trainer(TrainerConfig(accelerator="cpu", enable_progress_bar=False))
    assert has(on) and (subnormal * 1.0).item() != 0.0  # building it changes nothing yet
    assert not has(build_trainer(TrainerConfig(accelerator="cpu", enable_progress_bar=False, flush_denormals=False)))
    assert not has(build_trainer(TrainerConfig(accelerator="cpu", enable_progress_bar=False), inference=True))
    callback = next(cb for cb in on.callbacks if isinstance(cb, FlushDenormals))
    try:
        callback.on_fit_start(on, None)
        assert (subnormal * 1.0).item() == 0.0
        callback.on_fit_end(on, None)
        assert (subnormal * 1.0).item() == pytest.approx(1e-39, rel=1e-3)
    finally:
        torch.set_flush_denormal(False)
