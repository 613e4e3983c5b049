"""diffusion.precision: explicit choices pass through, auto follows the hardware, bad values name the key."""

from __future__ import annotations

import pytest
import torch

from diffinject.diffusion import precision
from diffinject.diffusion.model import DiffusionConfig
from diffinject.errors import DiffinjectError

CPU = torch.device("cpu")


@pytest.mark.parametrize("name", ["32-true", "bf16-mixed", "16-mixed"])
def test_explicit_precision_is_kept(name):
    assert precision.resolve_precision(name, CPU) == name


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    assert precision.resolve_precision("auto", CPU) == expected


def test_bad_precision_names_the_param():
    with pytest.raises(DiffinjectError, match=r"diffusion\.precision.*'fp8'"):
        precision.resolve_precision("fp8", CPU)
    with pytest.raises(DiffinjectError, match=r"diffusion\.precision"):
        DiffusionConfig(precision="half").check()


def test_autocast_runs_the_network_in_the_chosen_dtype():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)
    with precision.autocast("bf16-mixed", CPU):
        assert conv(x).dtype == torch.bfloat16
    with precision.autocast("32-true", CPU):
        assert conv(x).dtype == torch.float32


def test_cpu_below_avx512_is_not_native_bf16(monkeypatch):
    """ATEN_CPU_CAPABILITY=avx2 (an AVX2-only machine, or one made to act like it) runs bf16 emulated."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert not precision.native_bf16(torch.device("cpu"))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert precision.native_bf16(torch.device("cpu"))
