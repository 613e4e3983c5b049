"""Device helpers: the NVML probe is skipped only where NVML cannot load, and nothing else changes."""

from __future__ import annotations

import os

import pytest

from diffinject import devices

VAR = "PYTORCH_NVML_BASED_CUDA_CHECK"


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


def test_cuda_answer_unchanged_by_skipping_the_probe(monkeypatch):
    """Where NVML fails, torch falls back to the CUDA runtime count: the same answer either way."""
    import torch

    monkeypatch.setenv(VAR, "1")
    with_probe = torch.cuda.is_available()
    monkeypatch.setenv(VAR, "0")
    assert torch.cuda.is_available() == with_probe
