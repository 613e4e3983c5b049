"""Injection sites and operators, the official schedule, probes, conflict pairing and the label rule."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from diffinject.diffusion.ddim import ddim_invert, ddim_step, eps_from_v, timestep_grid
from diffinject.diffusion.injection import make_pairs
from diffinject.diffusion.injection_params import InjectionParams
from diffinject.diffusion.probes import decide_label_from, fit_ridge_probe, probe_labels, site_view
from diffinject.diffusion.sampler import InjectionSampler, capture_features, plan_steps
from diffinject.diffusion.operators import channel_stats
from diffinject.diffusion.sites import SiteHook, site_names
from diffinject.errors import DiffinjectError
from tests.conftest import tiny_unet

# ---- operators -------------------------------------------------------------------------------------

def test_channel_stats_moves_a_planted_offset_and_keeps_the_pattern():
    f = torch.tensor([[0.0, 2.0], [4.0, 6.0]]).view(1, 1, 2, 2)  # mean 3
    shifted = f + 10.0  # same pattern, channel mean 13
    torch.testing.assert_close(channel_stats(f, shifted, 0.5), f + 5.0)  # mean moved half-way, pattern kept
    torch.testing.assert_close(channel_stats(f, shifted, 1.0), shifted)
    torch.testing.assert_close(channel_stats(f, shifted, 0.0), f)
    stretched = torch.tensor([[0.0, 4.0], [8.0, 12.0]]).view(1, 1, 2, 2)  # mean 6, twice the std
    torch.testing.assert_close(channel_stats(f, stretched, 1.0), 2.0 * f)  # (f − 3)/σ·2σ + 6
    # the content's layout never leaks in: a content with the same statistics changes nothing
    torch.testing.assert_close(channel_stats(f, f.flip(-1).flip(-2), 1.0), f)


def test_channel_stats_is_per_sample_and_per_channel():
    f = torch.randn(2, 3, 5, 5)
    content = torch.randn(2, 3, 4, 4) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1) + 7.0
    out = channel_stats(f, content, 1.0)
    torch.testing.assert_close(out.mean((2, 3)), content.mean((2, 3)))
    torch.testing.assert_close(out.std((2, 3)), content.std((2, 3)))


def _run(unet, x, t, hook=None, content=None, operator="slerp", gamma=0.0):
    with torch.no_grad():
        if hook is None:
            return unet(x, t).sample
        with hook.inject(content, operator, gamma):
            return unet(x, t).sample


def test_skip_injection_at_gamma_zero_is_the_identity_and_not_otherwise():
    unet, _ = tiny_unet()
    x, t = torch.randn(2, 3, 28, 28), torch.tensor([100, 700])
    hook = SiteHook(unet)
    with torch.no_grad(), hook.capture(site_names(unet)):
        unet(torch.randn(2, 3, 28, 28), t)
    other = hook.captured
    plain = _run(unet, x, t)
    for site in ("up0", "up1"):
        torch.testing.assert_close(_run(unet, x, t, hook, {site: other[site]}, "slerp", 0.0), plain)
        assert (_run(unet, x, t, hook, {site: other[site]}, "slerp", 0.8) - plain).abs().max() > 1e-3
        assert (_run(unet, x, t, hook, {site: other[site]}, "channel_stats", 0.8) - plain).abs().max() > 1e-3
    hook.remove()
    torch.testing.assert_close(unet(x, t).sample, plain)  # removed hooks leave the UNet as it was


def test_sites_capture_what_each_up_block_receives():
    unet, _ = tiny_unet()
    hook = SiteHook(unet)
    with torch.no_grad(), hook.capture(site_names(unet)):
        unet(torch.randn(2, 3, 28, 28), torch.tensor([1, 2]))
    shapes = {s: [tuple(f.shape[1:]) for f in fs] for s, fs in hook.captured.items()}
    # block_out_channels [8, 16]: two levels, a 14 × 14 bottleneck; up0 receives the low-resolution skips
    # (the first block's downsample, then the second block's resnet), up1 conv_in's and the first resnet's
    assert shapes["h"] == [(16, 14, 14)]
    assert shapes["up0"] == [(8, 14, 14), (16, 14, 14)]
    assert shapes["up1"] == [(8, 28, 28), (8, 28, 28)]
    hook.remove()


def test_unknown_site_and_operator_are_refused():
    unet, scheduler = tiny_unet()
    with pytest.raises(ValueError, match="up9"):
        InjectionSampler(unet, scheduler, InjectionParams(site=["up9"]))
    with pytest.raises(DiffinjectError, match="params 'injection.operator': got 'add'"):
        InjectionSampler(unet, scheduler, InjectionParams(operator="add"))


def test_features_recomputed_from_the_path_equal_a_direct_capture():
    """capture_features(path) at step i is what the UNet's mid block gives on x_{t_i}, in any batching."""
    unet, scheduler = tiny_unet()
    x0 = torch.rand(3, 3, 28, 28) * 2 - 1
    inv = ddim_invert(unet, scheduler, x0, 6, keep_path=True)
    features = capture_features(unet, inv.xs, inv.timesteps, ["h", "up0"])
    one_by_one = capture_features(unet, inv.xs, inv.timesteps, ["h"], batch_size=1)
    hook = SiteHook(unet)
    with torch.no_grad(), hook.capture(["h"]):
        unet(inv.xs[2], torch.full((3,), int(inv.timesteps[2])))
    hook.remove()
    torch.testing.assert_close(features["h"][0][2], hook.captured["h"][0])
    torch.testing.assert_close(one_by_one["h"][0], features["h"][0], atol=1e-5, rtol=1e-5)
    assert features["up0"][0].shape[:2] == (6, 3)


# ---- schedules -------------------------------------------------------------------------------------

def test_floor_grid_matches_injectfusion():
    np.testing.assert_array_equal(timestep_grid(5, 1000, floor=True), [0, 249, 499, 749, 999])  # int(s + 1e-6)


def test_official_schedule_injects_exactly_on_replace_steps():
    cfg = InjectionParams(schedule="official", n_gen_step=100, t_edit=400, t_boost=200, dt_lambda=0.99, t_max=None)
    steps = plan_steps(cfg, 1000)
    gen, replace = set(timestep_grid(100, 1000, floor=True).tolist()), set(timestep_grid(50, 1000, floor=True).tolist())
    assert [s.t for s in steps] == sorted(gen, reverse=True)
    assert {s.t for s in steps if s.inject} == {t for t in gen & replace if t >= 400}
    # eta and dt_lambda switch on replace steps only, as in InjectFusion's denoising_step calls
    assert {s.t for s in steps if s.eta > 0} == {t for t in gen & replace if t <= 200}
    assert {s.t for s in steps if s.dir_scale != 1.0} == {t for t in gen & replace if t >= 950}
    assert all(s.eta == 0 and s.dir_scale == 1.0 and not s.inject for s in steps if s.t not in replace)


def test_official_schedule_at_fifty_steps_replaces_every_step_and_dt_threshold_follows_T():
    steps = plan_steps(InjectionParams(schedule="official", n_gen_step=50, t_edit=0, t_boost=200, t_max=None), 1000)
    assert all(s.inject for s in steps) and len(steps) == 50
    short = plan_steps(InjectionParams(schedule="every_step", n_gen_step=10, dt_lambda=0.9, t_boost=200, t_max=None), 200)  # T = 200
    assert {s.t for s in short if s.dir_scale != 1.0} == {t for t in (s.t for s in short) if t >= 190}


def test_every_step_schedule_is_the_rounded_grid_with_injection_above_t_edit():
    steps = plan_steps(InjectionParams(n_gen_step=5, t_edit=500, t_boost=300, t_max=None), 1000)
    assert [s.t for s in steps] == [999, 749, 500, 250, 0]
    assert [s.inject for s in steps] == [True, True, True, False, False]
    assert [s.eta for s in steps] == [0, 0, 0, 1, 1]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_equals_diffusers_ddim_scheduler(prediction_type, eta):
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type=prediction_type,
                              clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(20)  # 950, 900, ..., 0
    torch.manual_seed(0)
    x_t, out, noise = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    ac = scheduler.alphas_cumprod
    for t in (950, 500, 50):
        expected = scheduler.step(out, t, x_t, eta=eta, variance_noise=noise).prev_sample
        a_t, a_next = ac[t], ac[t - 50]
        eps = out if prediction_type == "epsilon" else eps_from_v(out, x_t, a_t)
        ours = ddim_step(x_t, eps, eps, a_t, a_next, eta=eta, noise=noise)
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


# ---- probes ----------------------------------------------------------------------------------------

def test_probe_learns_a_planted_linear_attribute_and_not_a_random_one():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 400, 30, generator=gen)  # (T, N, D)
    planted = (x[0, :, :3] @ torch.tensor([1.0, -2.0, 0.5])).gt(0).long().numpy()  # linear in the features
    random = torch.randint(0, 2, (400,), generator=gen).numpy()
    fit, held = slice(0, 300), slice(300, 400)

    def accuracy(labels: np.ndarray) -> float:
        y = torch.nn.functional.one_hot(torch.as_tensor(labels[fit]), 2).double()
        scores = fit_ridge_probe(x[:, fit], y, x[:, held], ridge=1e-3)
        return float((scores[0].argmax(-1).numpy() == labels[held]).mean())

    assert accuracy(planted) > 0.9
    assert accuracy(random) < 0.65


def test_probe_returns_after_the_process_changed_its_thread_count():
    """A batched LU solve nested MKL's threaded dgetrf inside torch's parallel loop and never returned once
    torch.set_num_threads had gone 1 -> 2 (as an earlier test does); run in a child so a hang fails."""
    code = ("import torch\n"
            "from diffinject.diffusion.probes import fit_ridge_probe\n"
            "torch.set_num_threads(1); torch.randn(300, 300) @ torch.randn(300, 300); torch.set_num_threads(2)\n"
            "x = torch.randn(2, 300, 30, dtype=torch.float64)\n"
            "for _ in range(50):\n"
            "    fit_ridge_probe(x, torch.randn(300, 2), x[:, :10])\n"
            "print('returned')\n")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("fit_ridge_probe did not return within 120 s after a thread-count change")
    assert done.returncode == 0 and "returned" in done.stdout, done.stderr[-2000:]


def test_labelling_modes_give_the_right_targets():
    soft = torch.softmax(torch.randn(6, 4), 1)
    labels = probe_labels(np.array([0, 1, 2, 3, 0, 1]), soft, np.array([3, 2]), torch.eye(4)[[1, 0]], 4,
                          fit_bias=np.array([1, 1, 2, 3, 0, 0]), eval_bias=np.array([0, 1]))
    assert set(labels) == {"self_labeled", "cls_labeled", "cls_labeled_oh", "true_bias"}
    assert labels["self_labeled"].fit.shape == labels["cls_labeled"].fit.shape == (6, 4)
    torch.testing.assert_close(labels["cls_labeled"].fit, soft.double())  # soft targets
    assert labels["cls_labeled_oh"].fit.argmax(1).tolist() == soft.argmax(1).tolist()
    assert set(labels["cls_labeled_oh"].fit.unique().tolist()) == {0.0, 1.0}  # one-hot
    np.testing.assert_array_equal(labels["cls_labeled"].eval, [1, 0])  # scored against the proxy's argmax
    np.testing.assert_array_equal(labels["self_labeled"].eval, [3, 2])
    assert "true_bias" not in probe_labels(np.zeros(6, int), soft, np.zeros(2, int), soft[:2], 4)


def test_site_views_have_stats_and_pooled_map_shapes():
    f = (torch.randn(5, 4, 8, 28, 28), torch.randn(5, 4, 16, 14, 14))  # (T, N, C, H, W) per tensor
    assert site_view(f, "stats").shape == (5, 4, 2 * (8 + 16))
    assert site_view(f, "map").shape == (5, 4, 7 * 7 * (8 + 16))


def test_label_rule_follows_what_the_injected_site_carries():
    probe = {"timesteps": [0, 500, 999], "curves": {
        "up0": {"stats": {"self_labeled": [0.2, 0.2, 0.1], "cls_labeled_oh": [0.9, 0.8, 0.7]},
                "map": {"self_labeled": [0.9, 0.8, 0.5], "cls_labeled_oh": [0.3, 0.3, 0.3]}}}}
    assert decide_label_from(probe, ["up0"], "channel_stats", 0)["label_from"] == "style"  # carries the bias
    assert decide_label_from(probe, ["up0"], "slerp", 0)["label_from"] == "content"  # carries the class
    only_late = decide_label_from(probe, ["up0"], "slerp", 900)  # only t >= t_edit counts
    assert only_late["probe_target_acc"] == 0.5 and only_late["label_from"] == "content"
    only_early = decide_label_from(probe, ["up0"], "channel_stats", 0, t_max=10)  # ... and t <= t_max
    assert only_early["probe_target_acc"] == 0.2 and only_early["probe_bias_proxy_acc"] == 0.9
    with pytest.raises(ValueError, match="window"):
        decide_label_from(probe, ["up0"], "slerp", 600, t_max=400)


# ---- pairing ---------------------------------------------------------------------------------------

def test_pairs_with_the_label_from_the_style_never_pair_a_content_the_biased_model_calls_the_style_class():
    content_targets, content_proxy = np.array([0, 1, 2, 3]), np.array([5, 6, 7, 8])  # mined: proxy = colour
    style_targets = np.repeat(np.arange(10), 3)
    pairs = make_pairs(content_targets, style_targets, 200, 0, "style", content_proxy, style_targets)
    assert np.all(style_targets[pairs.style] != content_proxy[pairs.content])
    assert len(set(style_targets[pairs.style].tolist())) == 10  # every class still gets styles


def test_pairs_with_the_label_from_the_content_skip_styles_whose_proxy_is_the_content_class():
    content_targets = np.array([0, 1])
    style_targets, style_proxy = np.array([1, 2, 3, 0]), np.array([0, 2, 1, 0])
    pairs = make_pairs(content_targets, style_targets, 50, 1, "content", None, style_proxy)
    assert np.all(style_proxy[pairs.style] != content_targets[pairs.content])
    assert np.all(style_targets[pairs.style] != content_targets[pairs.content])


def _spread(labels: np.ndarray, bias: np.ndarray) -> dict[int, np.ndarray]:
    """Per synthetic label, how many pairs took each bias value (0 for values not drawn)."""
    return {int(y): np.bincount(bias[labels == y], minlength=10) for y in np.unique(labels)}


def test_balanced_pairing_with_the_label_from_the_style_spreads_each_labels_bias_evenly():
    """Planted: 8 mined contents, 6 of which the biased model calls class 1. Per label the most even
    spread puts each allowed proxy value (1, 2, 3, minus the label) within one pair of the others;
    random pairing inherits the 6:1:1 imbalance."""
    content_targets, content_proxy = np.arange(8), np.array([1, 1, 1, 1, 1, 1, 2, 3])
    style_targets = np.repeat(np.arange(10), 3)
    balanced = make_pairs(content_targets, style_targets, 300, 0, "style", content_proxy, style_targets, "balanced")
    random = make_pairs(content_targets, style_targets, 300, 0, "style", content_proxy, style_targets)
    assert np.all(style_targets[balanced.style] != content_proxy[balanced.content])  # still conflicts
    labels = style_targets[balanced.style]
    assert np.all(np.bincount(labels, minlength=10) == 30)  # every label as often
    for y, counts in _spread(labels, content_proxy[balanced.content]).items():
        allowed = [v for v in (1, 2, 3) if v != y]
        assert counts[[v for v in range(10) if v not in allowed]].sum() == 0
        assert counts[allowed].max() - counts[allowed].min() <= 1, (y, counts)
    # the six class-1 contents share their value's draws: each is used as evenly as the others
    uses = np.bincount(balanced.content, minlength=8)
    assert uses[:6].max() - uses[:6].min() <= 1
    random_spread = _spread(style_targets[random.style], content_proxy[random.content])
    assert max(c[[1, 2, 3]].max() - c[[1, 2, 3]].min() for c in random_spread.values()) > 5


def test_balanced_pairing_with_the_label_from_the_content_spreads_the_styles_proxies():
    content_targets = np.array([0, 1, 2])
    style_targets = np.repeat(np.arange(10), 4)
    style_proxy = style_targets.copy()
    style_proxy[:20] = 9  # half the styles look like class 9 to the biased model
    pairs = make_pairs(content_targets, style_targets, 270, 3, "content", None, style_proxy, "balanced")
    assert np.all(style_proxy[pairs.style] != content_targets[pairs.content])
    assert np.all(style_targets[pairs.style] != content_targets[pairs.content])
    for y, counts in _spread(content_targets[pairs.content], style_proxy[pairs.style]).items():
        present = [v for v in np.unique(style_proxy) if v != y]
        assert counts[present].max() - counts[present].min() <= 1, (y, counts)
    again = make_pairs(content_targets, style_targets, 270, 3, "content", None, style_proxy, "balanced")
    assert (again.content == pairs.content).all() and (again.style == pairs.style).all()


def test_an_unknown_pairing_names_the_param():
    with pytest.raises(DiffinjectError, match=r"injection\.pairing"):
        make_pairs(np.arange(3), np.arange(3), 5, 0, pairing="even")


def test_a_unet_without_the_shared_encoders_layout_says_so_once():
    """No silent fallback: a network lacking conv_in (or down_blocks) runs two full passes, with a warning."""
    unet, scheduler = tiny_unet()
    del unet.conv_in
    with pytest.warns(UserWarning, match="two full UNet passes"):
        sampler = InjectionSampler(unet, scheduler, InjectionParams(operator="slerp", site=["h"]))
    assert not sampler.share_encoder
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        InjectionSampler(unet, scheduler, InjectionParams(operator="slerp", site=["h"]), share_encoder=False)


@pytest.mark.parametrize("window", [dict(t_edit=1000, t_max=None), dict(t_edit=2, t_max=3)])
def test_a_window_without_a_generation_step_is_refused(window):
    """t_edit beyond the schedule (or a t_edit..t_max window between two steps) would inject nothing at all."""
    with pytest.raises(ValueError, match="holds none of the 20 every_step generation steps .* nothing would be injected"):
        plan_steps(InjectionParams(n_gen_step=20, **window), 1000)
    assert not any(s.inject for s in plan_steps(InjectionParams(n_gen_step=20, h_gamma=0.0, **window), 1000))


def test_a_window_that_ends_before_it_starts_names_t_max():
    with pytest.raises(DiffinjectError, match=r"params 'injection.t_max': got 500, expected >= injection.t_edit \(600\)"):
        plan_steps(InjectionParams(n_gen_step=20, t_edit=600, t_max=500), 1000)


def test_the_stats_reader_reads_the_colour_of_images_whose_labels_say_the_class():
    """Planted: a digit-like shape per class, its stroke painted in one of 10 colours. The reader is fitted
    on labels that follow the colour for 95 % of the images (what a biased model predicts) and must read
    the colour, not the shape, of held-out images painted against their class."""
    from diffinject.diffusion.bias_reader import StatsReader

    rng = np.random.default_rng(0)
    palette = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, .5, 0], [.5, 0, 1],
                        [.5, 1, .5], [1, 1, 1]])  # ten colours apart, as a colour bias's palette is

    def paint(classes, colours):
        images = torch.zeros(len(classes), 3, 28, 28)
        for i, (k, c) in enumerate(zip(classes, colours)):
            top, left = 2 + 2 * (k % 5), 4 + 8 * (k // 5)  # the class is where the stroke is, its area the same
            images[i, :, top:top + 6, left:left + 10] = torch.as_tensor(palette[c], dtype=torch.float32)[:, None, None]
            images[i] += torch.as_tensor(rng.normal(0, 0.01, (3, 28, 28)), dtype=torch.float32).clamp(min=0)
        return (images.clamp(0, 1) * 255).to(torch.uint8)

    classes = rng.integers(0, 10, 1000)
    colours = np.where(rng.random(1000) < 0.95, classes, rng.integers(0, 10, 1000))
    labels = torch.as_tensor(np.where(rng.random(1000) < 0.95, colours, classes))  # mostly the colour
    reader = StatsReader(paint(classes, colours), labels, 10)
    held_classes = rng.integers(0, 10, 200)
    held_colours = (held_classes + rng.integers(1, 10, 200)) % 10  # every one a conflict
    read = reader.predict(paint(held_classes, held_colours)).numpy()
    assert (read == held_colours).mean() > 0.9 and (read == held_classes).mean() < 0.2
