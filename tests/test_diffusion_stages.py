"""train_diffusion / invert input handling: a user's pretrained UNet folder, bad params, resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffinject.diffusion.injection import make_pairs
from diffinject.diffusion.injection_params import InjectionParams
from diffinject.diffusion.model import DiffusionConfig, build_scheduler, build_unet, load_diffusion
from diffinject.errors import DiffinjectError
from diffinject.stages import train_diffusion

TINY = {"block_out_channels": [8, 16], "norm_num_groups": 4, "batch_size": 16, "warmup_steps": 2,
        "sample_grid": 4, "sample_steps": 10}


def _root(tmp_path: Path, prepared: Path) -> Path:
    (tmp_path / "data").mkdir(parents=True)
    (tmp_path / "data" / "prepared").symlink_to(prepared)
    return tmp_path


def _params(**diffusion) -> dict:
    return {"seed": 0, "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
            "diffusion": {**TINY, **diffusion}, "injection": {"auto": False, "n_inv_step": 4, "n_gen_step": 4}}


def test_pretrained_unet_folder_is_loaded_not_trained(tmp_path, prepared_mnist):
    torch.manual_seed(1)
    user = tmp_path / "user_unet"
    build_unet(DiffusionConfig(**{k: v for k, v in TINY.items() if k in ("block_out_channels", "norm_num_groups")}), 28, 3).save_pretrained(user)
    root = _root(tmp_path / "run", prepared_mnist)
    metrics = train_diffusion.run(_params(pretrained=str(user)), root=root)
    assert metrics["pretrained"] == str(user) and "train_seconds" not in metrics
    unet, scheduler = load_diffusion(root / "models" / "diffusion")
    original, _ = load_diffusion(user, build_scheduler(DiffusionConfig()))
    for a, b in zip(unet.parameters(), original.parameters()):
        torch.testing.assert_close(a, b)
    assert scheduler.config.num_train_timesteps == 1000
    report = json.loads((root / "metrics" / "diffusion.json").read_text())
    assert 0 <= report["reconstruction"]["colour_kept"] <= 1


def test_not_a_unet_folder_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffinjectError, match="not a diffusers UNet2DModel folder"):
        load_diffusion(tmp_path / "empty")


@pytest.mark.parametrize("cfg, param", [
    ({"block_out_channels": [12, 16], "norm_num_groups": 8}, "diffusion.norm_num_groups"),
    ({"block_out_channels": [8, 8, 8, 8], "norm_num_groups": 4}, "diffusion.block_out_channels"),
    ({"prediction_type": "sample"}, "diffusion.prediction_type"),
])
def test_bad_architecture_names_the_param(cfg, param):
    with pytest.raises(DiffinjectError, match=param.replace(".", r"\.")):
        build_unet(DiffusionConfig(**cfg), 28, 3)


# (a set operator is checked against the operators the sampler implements: test_injection_sites.py)
@pytest.mark.parametrize("key, value", [("h_gamma", 1.5), ("n_inv_step", 1), ("style_easiest_fraction", 0.0),
                                        ("schedule", "sometimes"), ("site", []),
                                        ("label_from", "both"), ("replace_steps", 1), ("pairing", "even"),
                                        ("pairing_proxy", "bias_judge")])
def test_bad_injection_params_name_the_key(key, value):
    with pytest.raises(DiffinjectError, match=f"injection.{key}"):
        InjectionParams(**{key: value}).check()


def test_pairs_mix_classes_and_are_seeded():
    content_t = torch.arange(10).repeat(3).numpy()
    style_t = torch.arange(10).repeat_interleave(2).numpy()
    a = make_pairs(content_t, style_t, 50, seed=4)
    b = make_pairs(content_t, style_t, 50, seed=4)
    assert (a.content == b.content).all() and (a.style == b.style).all()
    assert (content_t[a.content] != style_t[a.style]).all()
    assert len(set(a.content[:30].tolist())) == 30  # every content used before any repeats


class Interrupt(Exception):
    pass


def test_training_resumed_mid_epoch_ends_with_the_uninterrupted_weights(tmp_path, prepared_mnist, monkeypatch, capsys):
    """Killed at step 6, resumed from the step-4 checkpoint (mid-epoch: an epoch is 25 batches here):
    the same batches, noise, optimizer and EMA follow, so the weights equal an uninterrupted run's."""
    from diffinject.diffusion.training import DiffusionModule

    params = _params(train_steps=8, checkpoint_every=4)
    whole = _root(tmp_path / "whole", prepared_mnist)
    train_diffusion.run(params, root=whole)
    root = _root(tmp_path / "killed", prepared_mnist)
    original = DiffusionModule.on_train_batch_end

    def die_at_step_6(self, outputs, batch, batch_idx):
        original(self, outputs, batch, batch_idx)
        if self.global_step == 6:
            raise Interrupt

    monkeypatch.setattr(DiffusionModule, "on_train_batch_end", die_at_step_6)
    with pytest.raises(Interrupt):
        train_diffusion.run(params, root=root)
    assert not (root / "models" / "diffusion").exists()
    assert list((root / "models" / ".diffusion-resume").glob("*/last.ckpt"))
    monkeypatch.setattr(DiffusionModule, "on_train_batch_end", original)
    steps = []
    monkeypatch.setattr(DiffusionModule, "on_train_batch_end",
                        lambda self, o, b, i: (steps.append(self.global_step), original(self, o, b, i)))
    train_diffusion.run(params, root=root)
    assert "resuming from" in capsys.readouterr().out
    assert steps == [5, 6, 7, 8]  # continued after the step-4 checkpoint, not from zero
    assert (root / "models" / "diffusion" / "unet" / "config.json").is_file()
    assert not list((root / "models" / ".diffusion-resume").glob("*/last.ckpt"))
    for name in ("unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"):
        assert (root / "models/diffusion" / name).read_bytes() == (whole / "models/diffusion" / name).read_bytes(), name


@pytest.mark.parametrize(("shape", "found"), [((3, 32, 32), "3x28x28 images"), ((1, 28, 28), "3x28x28 images")])
def test_a_diffusion_folder_for_other_images_is_a_one_line_error(tmp_path, shape, found):
    """Another image size or channel count: named, with the fix, before any PyTorch shape error."""
    from diffinject.diffusion.model import load_diffusion, save_diffusion
    from diffinject.errors import DiffinjectError
    from tests.conftest import tiny_unet

    unet, scheduler = tiny_unet()  # 3 x 28 x 28
    save_diffusion(unet, scheduler, tmp_path / "diffusion")
    assert load_diffusion(tmp_path / "diffusion", image_shape=(3, 28, 28))[0].config.sample_size == 28
    with pytest.raises(DiffinjectError, match=rf"unet: the UNet is built for {found} .* but the data is {'x'.join(map(str, shape))}"):
        load_diffusion(tmp_path / "diffusion", image_shape=shape)


@pytest.mark.parametrize("window, match", [
    ({"t_edit": 1000, "t_max": None}, r"params 'injection.t_edit': got 1000, expected <= 999"),  # beyond T
    ({"t_edit": 0, "t_max": 1200}, r"params 'injection.t_max': got 1200, expected <= 999"),
    ({"t_edit": 950, "t_max": 960}, r"params 'injection': the window t_edit 950 .. t_max 960 holds none"),  # within T, no step
])
def test_inject_refuses_a_window_beyond_the_schedule(window, match, tiny_ddpm, prepared_mnist, tmp_path):
    from diffinject.errors import DiffinjectError
    from diffinject.stages import inject
    from tests.conftest import inverted_repo

    root = inverted_repo(tmp_path / "repo", prepared_mnist, *tiny_ddpm, 6)
    params = {"trainer": {"accelerator": "cpu", "enable_progress_bar": False},
              "injection": {"auto": False, "n_gen_step": 6, "n_inv_step": 6, "n_samples": 4, "n_samples_ratio": None,
                            "label_from": "content", **window}}
    with pytest.raises(DiffinjectError, match=match):
        inject.run(params, root)
    assert not (root / "data" / "synthetic").exists()
