"""Label-reader guidance (`injection.reader_guidance`, diffusion/reader_guidance.py): the late generation
steps move the denoised estimate up a reader's log p(label); 0 is the unguided path bit for bit, a set
scale reaches the pool's report, and a missing reader or a negative scale is a one-line error."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

from diffinject.diffusion.injection_params import InjectionParams
from diffinject.diffusion.reader_guidance import ReaderGuidance
from diffinject.errors import DiffinjectError
from diffinject.models.checkpoint import save_classifier
from diffinject.models.networks import NetConfig, build_network
from tests.conftest import tiny_unet


def linear_reader(n_classes: int = 10, shape=(3, 28, 28), seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(shape).prod()), n_classes)).eval()


def log_p(reader: nn.Module, x0: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(reader((x0.clamp(-1, 1) + 1) / 2), 1).gather(1, labels[:, None]).squeeze(1)


def test_the_shift_is_linear_in_the_scale_and_raises_the_readers_log_p():
    reader = linear_reader()
    x_t, eps = torch.randn(4, 3, 28, 28) * 0.3, torch.randn(4, 3, 28, 28) * 0.3
    a_t, labels = torch.tensor(0.6), torch.tensor([0, 3, 5, 9])
    one = ReaderGuidance(reader, 1.0, 300).eps_shift(x_t, eps, a_t, labels)
    assert torch.allclose(ReaderGuidance(reader, 4.0, 300).eps_shift(x_t, eps, a_t, labels), 4 * one, atol=1e-6)
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    x0_guided = (x_t - (1 - a_t).sqrt() * (eps - one)) / a_t.sqrt()  # the estimate from the shifted prediction
    assert (log_p(reader, x0_guided, labels) > log_p(reader, x0, labels)).all()
    assert not ReaderGuidance(reader, 0.0, 300).applies(10) and not ReaderGuidance(reader, 1.0, 300).applies(301)


def _generated(reader: ReaderGuidance | None, labels: torch.Tensor) -> torch.Tensor:
    from diffinject.diffusion.ddim import ddim_invert
    from diffinject.diffusion.sampler import InjectionSampler, capture_features

    unet, scheduler = tiny_unet()
    x0 = torch.rand(4, 3, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    inv = ddim_invert(unet, scheduler, x0, 6, keep_path=True)
    content = capture_features(unet, inv.xs, inv.timesteps, ["up0"])
    cfg = InjectionParams(operator="channel_stats", site=["up0"], h_gamma=1.0, label_from="style", t_max=500, n_gen_step=6)
    with InjectionSampler(unet, scheduler, cfg, reader=reader) as sampler:
        return sampler.generate(inv.x_T.flip(0), content, inv.timesteps, labels=labels)


def test_scale_zero_is_the_unguided_path_and_a_scale_moves_images_toward_the_label():
    reader, labels = linear_reader(), torch.tensor([2, 4, 6, 8])
    plain = _generated(None, labels)
    assert torch.equal(_generated(ReaderGuidance(reader, 0.0, 1000), labels), plain)
    guided = _generated(ReaderGuidance(reader, 2.0, 1000), labels)
    assert torch.isfinite(guided).all() and not torch.equal(guided, plain)
    assert log_p(reader, guided, labels).mean() > log_p(reader, plain, labels).mean()
    late_only = _generated(ReaderGuidance(reader, 2.0, 100), labels)  # fewer steps guided: another image
    assert not torch.equal(late_only, guided) and not torch.equal(late_only, plain)


def test_a_negative_scale_is_a_one_line_error():
    with pytest.raises(DiffinjectError, match=r"params 'injection.reader_guidance' / 'injection.reader_t_max': got -1.0 / 300, expected >= 0"):
        InjectionParams(reader_guidance=-1.0).check()


def _inject(root, **injection):
    from diffinject.stages import inject

    params = {"seed": 0, "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
              "injection": {"n_gen_step": 6, "n_inv_step": 6, "n_samples": 8, "n_samples_ratio": None, "batch_size": 8,
                            "operator": "channel_stats", "site": ["up1"], "t_max": 500, "h_gamma": 1.0,
                            "label_from": "style", **injection}}
    return inject.run(params, root)


def test_a_set_scale_guides_the_pool_with_the_reference_and_says_so(prepared_mnist, tmp_path):
    from tests.conftest import inverted_repo

    root = inverted_repo(tmp_path / "repo", prepared_mnist, *tiny_unet(), 6)
    with pytest.raises(DiffinjectError, match=r"models/lff.*\(or set injection.reader_guidance: 0\)") as caught:
        _inject(root, reader_guidance=2.0)
    assert "\n" not in str(caught.value) and not (root / "data" / "synthetic").exists()
    plain = _inject(root)
    assert "reader_guidance" not in plain
    first = pd.read_parquet(root / "data" / "synthetic" / "manifest.parquet")
    first_images = [(root / "data" / "synthetic" / p).read_bytes() for p in first["path"]]
    cfg = NetConfig("mlp", 10, (3, 28, 28))
    torch.manual_seed(0)
    (root / "models" / "lff").mkdir(parents=True)
    save_classifier(root / "models" / "lff", build_network(cfg), cfg, {})  # untrained is enough: a gradient
    report = _inject(root, reader_guidance=2.0, reader_t_max=400)
    assert report["reader_guidance"] == {"scale": 2.0, "t_max": 400, "reader": "lff"}
    assert json.loads((root / "metrics" / "inject.json").read_text())["reader_guidance"]["reader"] == "lff"
    second = pd.read_parquet(root / "data" / "synthetic" / "manifest.parquet")
    assert list(first["target"]) == list(second["target"])  # the same pairs and labels, other images
    second_images = [(root / "data" / "synthetic" / p).read_bytes() for p in second["path"]]
    assert first_images != second_images
