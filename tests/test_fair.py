"""The fair generator (stage fair_finetune): the balanced assignment, the alignment loss, the adjusted
gradient, the LoRA adapter's reload, and the stage end to end on the tiny DDPM."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from diffinject.diffusion import fair
from diffinject.diffusion.injection_params import InjectionParams
from diffinject.diffusion.lora import TimestepGate, add_lora, attach_adapter, read_adapter, save_adapter
from diffinject.diffusion.sampler import InjectionSampler
from diffinject.diffusion.synthetic_quality import bias_deviation, conflict_target
from diffinject.errors import DiffinjectError
from tests.conftest import tiny_unet

# --- the balanced assignment and the alignment loss ----------------------------------------------------


def planted(values: np.ndarray, k: int = 10, sure: float = 0.91) -> np.ndarray:
    """(n, k) probabilities with mass `sure` on each image's planted value, the rest spread."""
    probs = np.full((len(values), k), (1 - sure) / (k - 1))
    probs[np.arange(len(values)), values] = sure
    return probs


def test_the_assignment_matches_the_target_counts_and_keeps_each_image_where_it_is():
    values = np.tile(np.arange(1, 10), 2)  # label 0: two images on each other value
    soft = fair.balanced_assignment(planted(values), 0, np.random.default_rng(0), draws=5)
    assert np.array_equal(soft.argmax(1), values) and np.allclose(soft.max(1), 1.0)
    assert np.array_equal(np.bincount(soft.argmax(1), minlength=10), [0] + [2] * 9)


def test_a_batch_piled_on_one_value_is_spread_evenly_over_the_others():
    probs = planted(np.full(27, 4), sure=0.6)
    probs[:, 3] += np.linspace(0, 0.1, 27)  # a ranking, so the images nearest 3 go to 3
    probs /= probs.sum(1, keepdims=True)
    hard = fair.balanced_assignment(probs, 4, np.random.default_rng(0), draws=3).argmax(1)
    assert np.array_equal(np.bincount(hard, minlength=10), [3, 3, 3, 3, 0, 3, 3, 3, 3, 3])
    assert set(hard[-3:]) == {3}  # the three with the most mass on 3 are the ones moved there


def test_the_label_itself_is_never_a_target_and_uncertain_images_get_none():
    values = np.array([1, 2, 3, 5, 5, 5, 5])  # 7 images over 9 values: the remainder is drawn
    targets = fair.alignment_targets(planted(values), 0, np.random.default_rng(1), draws=20, threshold=0.2)
    assert 0 not in targets
    assert list(targets[:3]) == [1, 2, 3]  # alone on their value: sure
    assert (targets[3:] == -1).sum() >= 1  # four on value 5 and one slot each: someone is moved, unsure where


def test_the_alignment_loss_is_zero_when_predictions_equal_their_assignments():
    targets = torch.tensor([3, 1, -1, 7])
    logits = torch.full((4, 10), -50.0)
    logits[torch.arange(4), targets.clamp_min(0)] = 50.0
    assert float(fair.alignment_loss(logits, targets)) < 1e-12
    assert float(fair.alignment_loss(logits.roll(1, 1), targets)) > 10
    assert float(fair.alignment_loss(logits, torch.full((4,), -1))) == 0.0


def test_bias_deviation_is_zero_on_the_target_and_counts_aligned_images():
    labels = np.repeat([0, 1], 9)
    bias = np.concatenate([np.arange(1, 10), [0, 2, 3, 4, 5, 6, 7, 8, 9]])
    assert bias_deviation(labels, bias, 10) == pytest.approx(0.0)
    assert conflict_target(2, 10)[2] == 0 and conflict_target(2, 10).sum() == pytest.approx(1.0)
    aligned = bias.copy()
    aligned[0] = 0  # one image of label 0 carries its own class's bias
    assert bias_deviation(labels, aligned, 10) > 0


# --- adjusted direct fine-tuning -----------------------------------------------------------------------


def test_the_adjusted_scales_standardise_each_steps_direct_coefficient():
    unet, scheduler = tiny_unet()
    sampler = InjectionSampler(unet, scheduler, InjectionParams(n_gen_step=10, t_max=None))
    coefficients, scales = fair.direct_coefficients(sampler, 5), fair.adjusted_scales(sampler, 5)
    products = np.array(coefficients) * np.array(scales)
    assert np.allclose(products, products[0]) and np.exp(np.log(scales).mean()) == pytest.approx(1.0)
    assert coefficients[0] > coefficients[-1]  # the last step's ε barely moves x_0: it gets the largest scale


def test_the_gradient_reaches_the_adapter_only_through_the_last_steps():
    unet, scheduler = tiny_unet()
    layers = add_lora(unet, rank=2, alpha=2.0)
    for layer in layers.values():
        torch.nn.init.normal_(layer.up.weight, std=0.1)
    sampler = InjectionSampler(unet, scheduler, InjectionParams(n_gen_step=6, t_max=None, operator="slerp", site=["h"]))
    TimestepGate(unet, layers, fair.gate_timestep(sampler, 2))
    x_T = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    content = {"h": (torch.randn(6, 2, 16, 14, 14, generator=torch.Generator().manual_seed(1)),)}
    with sampler:
        plain = sampler.generate(x_T, content, np.arange(6))
        head = fair.rollout_head(sampler, x_T, content, np.arange(6), 2)
        assert not head.requires_grad
        out = fair.rollout_tail(sampler, head, content, np.arange(6), fair.adjusted_scales(sampler, 2), 2)
    torch.testing.assert_close(out.detach(), plain)  # the gradient changes nothing of the forward
    out.sum().backward()
    assert all(layer.up.weight.grad is not None for layer in layers.values())
    assert all(not p.requires_grad for name, p in unet.named_parameters() if ".down." not in name and ".up." not in name)


# --- the adapter ----------------------------------------------------------------------------------------


def test_the_adapter_reloads_to_the_same_outputs_and_opens_only_below_its_timestep(tmp_path):
    unet, _ = tiny_unet()
    fresh = copy.deepcopy(unet)
    plain = copy.deepcopy(unet)
    layers = add_lora(unet, rank=3, alpha=6.0)
    torch.manual_seed(1)
    for layer in layers.values():
        torch.nn.init.normal_(layer.up.weight, std=0.05)
    TimestepGate(unet, layers, 300)
    save_adapter(layers, tmp_path, {"rank": 3, "alpha": 6.0, "max_timestep": 300})
    tensors, meta = read_adapter(tmp_path)
    attach_adapter(fresh, tensors, meta)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        for t in (torch.tensor([10, 300]), torch.tensor([500, 900])):
            assert torch.equal(fresh(x, t).sample, unet(x, t).sample)
        assert not torch.equal(fresh(x, torch.tensor([10, 300])).sample, plain(x, torch.tensor([10, 300])).sample)
        assert torch.equal(fresh(x, torch.tensor([500, 900])).sample, plain(x, torch.tensor([500, 900])).sample)
    with pytest.raises(DiffinjectError, match="does not fit this UNet"):
        attach_adapter(tiny_unet()[0], {k: v[:1] for k, v in tensors.items()}, meta)


def test_a_fresh_adapter_changes_no_output_bit():
    unet, _ = tiny_unet()
    x, t = torch.randn(2, 3, 28, 28), torch.tensor([10, 500])
    with torch.no_grad():
        before = unet(x, t).sample
        add_lora(unet, rank=2, alpha=2.0)
        assert torch.equal(unet(x, t).sample, before)


# --- the stage ---------------------------------------------------------------------------------------------

SETTING = {"auto": False, "operator": "channel_stats", "site": ["up0"], "t_max": None, "label_from": "style"}


def fair_params(**fair_keys) -> dict:
    return {"seed": 0, "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
            "biased": {"epochs": 1}, "lff": {"epochs": 1},
            "injection": {"n_gen_step": 6, "n_inv_step": 6, "n_samples": 8, "n_samples_ratio": None, "batch_size": 8,
                          "generator": "fair", **SETTING},
            "fair": {"steps": 2, "batch_size": 4, "grad_steps": 2, "eval_size": 8, "checkpoint_every": 1, **fair_keys}}


@pytest.fixture(scope="module")
def trained_repo(tiny_ddpm, prepared_mnist, tmp_path_factory):
    from diffinject.stages import lff, train_biased
    from tests.conftest import inverted_repo

    root = inverted_repo(tmp_path_factory.mktemp("fair") / "repo", prepared_mnist, *tiny_ddpm, 6)
    train_biased.run(fair_params(), root)
    lff.run(fair_params(), root)
    return root


def pool_bytes(root) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "data" / "synthetic" / "images").rglob("*.png"))}


def test_with_zero_learning_rate_the_fair_pool_is_the_base_pool_byte_for_byte(trained_repo):
    from diffinject.stages import fair_finetune, inject

    report = fair_finetune.run(fair_params(lr=0.0), trained_repo)
    assert set(report["before_after"]) == {"base", "fair"} and report["before_after"]["base"] == report["before_after"]["fair"]
    meta = json.loads((trained_repo / "models" / "fair" / "adapter.json").read_text())
    assert meta["injection"]["site"] == ["up0"] and meta["label_from"] == "style"
    inject.run(fair_params(), trained_repo)
    fair_pool = pool_bytes(trained_repo)
    base = fair_params()
    base["injection"]["generator"] = "base"
    inject.run(base, trained_repo)
    assert fair_pool and fair_pool == pool_bytes(trained_repo)


def test_fine_tuning_reads_no_bias_label_and_resumes_to_the_same_adapter(trained_repo, tmp_path, monkeypatch):
    from diffinject.stages import fair_finetune
    from tests.test_pilot import without_bias_labels

    adapters = []
    for root in (trained_repo, without_bias_labels(trained_repo, tmp_path / "unlabelled")):
        report = fair_finetune.run(fair_params(), root)
        assert report["trained"] and (root / "metrics" / "plots" / "fair" / "base_vs_fair.png").is_file()
        adapters.append((root / "models" / "fair" / "adapter.safetensors").read_bytes())
    assert adapters[0] == adapters[1]
    # interrupted after its first step (checkpoint_every 1), the re-run resumes there and ends at the same adapter
    real = fair_finetune.fine_tune

    def interrupted(*args, on_step=None, **kwargs):
        def stop(step, row):
            if step == 1:
                raise KeyboardInterrupt
        return real(*args, on_step=stop, **kwargs)

    monkeypatch.setattr(fair_finetune, "fine_tune", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fair_finetune.run(fair_params(), trained_repo)
    monkeypatch.setattr(fair_finetune, "fine_tune", real)
    assert fair_finetune.run(fair_params(), trained_repo)["resumed_from"] == 1
    assert (trained_repo / "models" / "fair" / "adapter.safetensors").read_bytes() == adapters[0]
    assert not (trained_repo / "models" / ".fair-resume").exists() or not any((trained_repo / "models" / ".fair-resume").iterdir())


def test_the_base_generator_trains_nothing_and_fair_without_an_adapter_is_a_one_line_error(trained_repo, tmp_path):
    from diffinject.stages import fair_finetune, inject
    from tests.conftest import make_root

    base = fair_params()
    base["injection"]["generator"] = "base"
    assert fair_finetune.run(base, trained_repo)["trained"] is False
    # every output dvc.yaml declares exists, so `dvc repro` passes with the default
    for out in ("models/fair/adapter.json", "metrics/fair.json", "metrics/plots/fair/base_vs_fair.png", "metrics/plots/fair/curve.csv"):
        assert (trained_repo / out).is_file(), out
    with pytest.raises(DiffinjectError, match=r"models/fair: no trained adapter"):
        inject.run(fair_params(), trained_repo)
    for weights, meta, error in ((b"garbage", b"{}", "not a readable adapter"), (None, b"[1]", "expected a JSON object")):
        fair_dir = trained_repo / "models" / "fair"
        (fair_dir / "adapter.safetensors").write_bytes(weights or b"")
        if weights is None:
            from safetensors.torch import save_file
            save_file({"x": torch.zeros(1)}, str(fair_dir / "adapter.safetensors"))
        (fair_dir / "adapter.json").write_bytes(meta)
        with pytest.raises(DiffinjectError, match=error):
            inject.run(fair_params(), trained_repo)
    with pytest.raises(DiffinjectError, match=r"params 'fair.preserve'"):
        fair_finetune.run(fair_params(preserve="clip"), make_root(tmp_path, trained_repo / "data" / "prepared"))
