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


def test_a_loaded_unet_gives_the_same_bits_on_one_and_two_threads(tiny_ddpm, tmp_path):
    """fp32 on the CPU: a sharded inject (each torchrun rank on fewer threads) must write the one-process
    files. oneDNN's 1x1 convolutions split small batches by thread; load_diffusion swaps them for an
    invariant product (same weights, same state_dict keys)."""
    from diffinject.diffusion.model import PointwiseConv2d, load_diffusion, save_diffusion

    unet, scheduler = tiny_ddpm
    save_diffusion(unet, scheduler, tmp_path / "diffusion")
    loaded, _ = load_diffusion(tmp_path / "diffusion")
    assert any(isinstance(m, PointwiseConv2d) for m in loaded.modules())
    assert loaded.state_dict().keys() == unet.state_dict().keys()
    threads = torch.get_num_threads()
    x, t = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(0)), torch.full((4,), 500)
    outs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.no_grad():
                outs.append(loaded(x, t).sample)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(*outs)
    with torch.no_grad():  # the same function as the plain convolution, to float rounding
        torch.testing.assert_close(outs[0], unet.eval()(x, t).sample, rtol=1e-5, atol=1e-5)
