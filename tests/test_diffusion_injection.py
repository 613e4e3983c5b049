"""Inversion -> generation on a trained tiny DDPM, injection identities, and a resumable inject stage."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from diffinject.data.tensors import load_split
from diffinject.diffusion.injection_params import InjectionParams
from diffinject.diffusion.model import to_model_range
from diffinject.diffusion.precision import autocast
from diffinject.diffusion.quality import reconstruct
from diffinject.diffusion.sampler import InjectionSampler
from diffinject.stages import inject
from tests.conftest import H_SLERP, PLAIN_DDIM, invert_with_h, inverted_repo

# DDIM inversion is exact only in the ODE limit: each step evaluates ε at x_t and reuses it to reach
# x_{t+Δ}, so the error shrinks with the number of steps. The tiny fixture model reconstructs valid
# digits at MSE ≈ 0.018 (in [-1, 1] units) with 50 steps, 0.13 with 20 and 0.50 with 10, and an
# untrained one at ≈ 1.8. The bound leaves room for float differences between machines while still
# failing for any broken inversion/generation pair.
RECONSTRUCTION_STEPS = 50
RECONSTRUCTION_MSE_BOUND = 0.05
# With h_gamma 1 and content = style, the generation takes the h stored on the inversion path instead of
# the one it computes. The two paths drift apart by up to 17 % (relative norm of h) at low t on the tiny
# model, which moves the image by MSE ≈ 0.08 from the plain reconstruction; another image's h moves it
# by > 100. A better DDPM drifts less (train_diffusion reports its reconstruction error).
OWN_H_MSE_BOUND = 0.2


def test_inversion_then_generation_reconstructs(tiny_ddpm, prepared_mnist):
    unet, scheduler = tiny_ddpm
    images = load_split(prepared_mnist, "valid").images[:16]
    rec = reconstruct(unet, scheduler, images, RECONSTRUCTION_STEPS, RECONSTRUCTION_STEPS)
    assert rec.mse < RECONSTRUCTION_MSE_BOUND


def test_full_injection_of_own_h_reproduces_reconstruction(tiny_ddpm, prepared_mnist):
    unet, scheduler = tiny_ddpm
    x0 = to_model_range(load_split(prepared_mnist, "valid").images[:8])
    steps = RECONSTRUCTION_STEPS
    inv, hs = invert_with_h(unet, scheduler, x0, steps)
    with InjectionSampler(unet, scheduler, InjectionParams(n_gen_step=steps, **PLAIN_DDIM, **H_SLERP)) as plain:
        a = plain.generate(inv.x_T, hs, inv.timesteps)
    with InjectionSampler(unet, scheduler, InjectionParams(n_gen_step=steps, **{**PLAIN_DDIM, **H_SLERP, "h_gamma": 1.0})) as own:
        b = own.generate(inv.x_T, hs, inv.timesteps)
        other = own.generate(inv.x_T, hs.flip(1), inv.timesteps)  # someone else's h
    own_gap, other_gap = (a - b).pow(2).mean(), (a - other).pow(2).mean()
    assert own_gap < OWN_H_MSE_BOUND
    assert other_gap > 100 * own_gap


def _inject_root(tmp_path: Path, prepared: Path, unet, scheduler, name: str) -> Path:
    return inverted_repo(tmp_path / name, prepared, unet, scheduler, 6)


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class Killed(Exception):
    pass


def test_inject_resumes_to_identical_files(tiny_ddpm, prepared_mnist, tmp_path):
    unet, scheduler = tiny_ddpm
    params = {"seed": 3, "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
              "injection": {"auto": False, "n_gen_step": 6, "n_inv_step": 6, "n_samples": 20, "n_samples_ratio": None, "batch_size": 4,
                            "t_boost": 400, "label_from": "content"}}
    whole = _inject_root(tmp_path, prepared_mnist, unet, scheduler, "whole")
    inject.run(params, root=whole)

    resumed = _inject_root(tmp_path, prepared_mnist, unet, scheduler, "resumed")

    def kill_after_two(batch: int) -> None:
        if batch == 1:
            raise Killed

    with pytest.raises(Killed):
        inject.run(params, root=resumed, on_batch=kill_after_two)
    assert not (resumed / "data" / "synthetic").exists()
    partial = list((resumed / "data").glob(".synthetic-partial-*"))
    assert len(partial) == 1 and len(list(partial[0].glob("batch_*.json"))) == 2
    inject.run(params, root=resumed)
    assert not list((resumed / "data").glob(".synthetic-partial-*"))
    assert _hashes(whole / "data" / "synthetic") == _hashes(resumed / "data" / "synthetic")


def test_bf16_autocast_keeps_reconstruction_and_fp32_outputs(tiny_ddpm, prepared_mnist):
    """diffusion.precision bf16-mixed: the network runs in bf16, but ε, the captured h and the DDIM
    updates stay fp32, and inversion -> generation still reconstructs within the same bound."""
    unet, scheduler = tiny_ddpm
    images = load_split(prepared_mnist, "valid").images[:16]
    x0 = to_model_range(images[:4])
    with autocast("bf16-mixed", torch.device("cpu")):
        rec = reconstruct(unet, scheduler, images, RECONSTRUCTION_STEPS, RECONSTRUCTION_STEPS)
        inv, hs = invert_with_h(unet, scheduler, x0, 5)
        with InjectionSampler(unet, scheduler, InjectionParams(n_gen_step=5, h_gamma=0.5, t_boost=-1, **H_SLERP)) as sampler:
            out = sampler.generate(inv.x_T, hs.flip(1), inv.timesteps)
    assert rec.mse < RECONSTRUCTION_MSE_BOUND
    assert inv.x_T.dtype == hs.dtype == out.dtype == torch.float32
    fp32 = reconstruct(unet, scheduler, images, RECONSTRUCTION_STEPS, RECONSTRUCTION_STEPS)
    assert abs(rec.mse - fp32.mse) < 0.5 * fp32.mse  # same reconstruction quality, not just "below the bound"


def test_probe_stage_then_inject_with_channel_stats_and_the_label_rule_it_decides(tiny_ddpm, prepared_mnist, tmp_path):
    """probe -> metrics/probe.json (every site, both views, the three labellings + the true bias to
    report) and its curves; inject with `label_from: auto` takes its label rule from there."""
    import json

    import pandas as pd

    from diffinject.stages import probe, train_biased

    unet, scheduler = tiny_ddpm
    root = _inject_root(tmp_path, prepared_mnist, unet, scheduler, "probed")
    params = {"seed": 0, "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
              "biased": {"epochs": 1}, "probe": {"n_images": 40},
              "injection": {"auto": False, "n_gen_step": 6, "n_inv_step": 6, "n_samples": 12, "n_samples_ratio": None, "batch_size": 6, "t_boost": -1,
                            "operator": "channel_stats", "site": "up0", "label_from": "auto"}}
    train_biased.run(params, root)
    report = probe.run(params, root)
    assert set(report["curves"]) == {"h", "up0", "up1"}
    assert set(report["curves"]["up0"]) == {"stats", "map"}
    assert set(report["curves"]["up0"]["stats"]) == {"self_labeled", "cls_labeled", "cls_labeled_oh", "true_bias"}
    assert len(report["curves"]["h"]["map"]["self_labeled"]) == len(report["timesteps"]) == 6
    assert (root / "metrics/plots/probe/accuracy.png").stat().st_size > 0
    assert json.loads((root / "metrics/probe.json").read_text())["n_eval"] == 40
    out = inject.run(params, root)
    rule = out["label_rule"]
    assert rule["decided_by"] == "probe" and rule["label_from"] in ("content", "style") and rule["view"] == "stats"
    pool = pd.read_parquet(root / "data/synthetic/manifest.parquet")
    assert (pool["label_from"] == rule["label_from"]).all() and (pool["operator"] == "channel_stats").all()
    column = "content_target" if rule["label_from"] == "content" else "style_target"
    assert (pool["target"] == pool[column]).all()
    if rule["label_from"] == "style":  # never a content the biased model already calls the style's class
        assert (pool["content_proxy"] != pool["style_target"]).all()
