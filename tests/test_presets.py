"""Every preset in presets/ is valid and is what it says: its keys are known, the DDPM it asks for builds at
its image size with the documented size, one training step moves the weights, and `python -m diffinject
preset NAME` prints the `dvc exp run` line that sets exactly its keys."""

from __future__ import annotations

import shlex

import pytest
import torch
import yaml

from diffinject import cli
from diffinject.config import load_params, section
from diffinject.data.prepare import DataConfig
from diffinject.diffusion.model import DiffusionConfig, build_scheduler, build_unet
from diffinject.diffusion.training import DiffusionModule
from diffinject.errors import DiffinjectError
from diffinject.presets import load_preset, preset_names, with_preset
from diffinject.stages import preset as preset_stage
from tests.conftest import REPO

# name -> (the UNet's parameter count it documents, in millions, and its image size)
DOCUMENTED = {"gpu": (35, 32)}


def test_the_presets_folder_holds_the_documented_presets():
    assert preset_names(REPO) == sorted(DOCUMENTED)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_each_preset_builds_its_documented_ddpm_and_a_step_trains_it(name):
    millions, size = DOCUMENTED[name]
    params = with_preset(load_params(REPO / "params.yaml"), load_preset(REPO, name))
    data, cfg = section(params, "data", DataConfig), section(params, "diffusion", DiffusionConfig)
    assert data.image_size == size
    unet, scheduler = build_unet(cfg, data.image_size, 3), build_scheduler(cfg)
    assert abs(sum(p.numel() for p in unet.parameters()) / 1e6 - millions) < 0.1 * millions
    module = DiffusionModule(unet, scheduler, cfg.lr, cfg.warmup_steps, cfg.train_steps, cfg.ema_decay)
    optimizer = module.configure_optimizers()["optimizer"]
    torch.manual_seed(0)
    before = [p.detach().clone() for p in unet.parameters()]
    loss = module.training_step((torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8),), 0)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert sum(not torch.equal(a, b) for a, b in zip(before, unet.parameters())) > len(before) // 2


def test_the_preset_command_prints_the_dvc_line_of_exactly_its_keys(capsys):
    preset = load_preset(REPO, "gpu")
    assert cli.main(["preset", "gpu", "--params", str(REPO / "params.yaml")]) == 0
    line = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert line[:3] == ["dvc", "exp", "run"]
    flags = dict(arg.split("=", 1) for arg in line[4::2])
    assert line[3::2] == ["-S"] * len(flags)
    assert {k: yaml.safe_load(v) for k, v in flags.items()} == \
        {f"{s}.{k}": v for s, values in preset.items() for k, v in values.items()}


def test_a_preset_that_would_not_build_is_refused_before_any_run(tmp_path):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "bad.yaml").write_text("diffusion:\n  block_out_channels: [32, 64, 64, 64]\n")
    with pytest.raises(DiffinjectError, match="28 px is not divisible by 8"):
        preset_stage.run(load_params(REPO / "params.yaml"), tmp_path, name="bad")
    (tmp_path / "presets" / "typo.yaml").write_text("diffusion:\n  layers_per_blok: 2\n")
    with pytest.raises(DiffinjectError, match="params 'diffusion.layers_per_blok': unknown key"):
        preset_stage.run(load_params(REPO / "params.yaml"), tmp_path, name="typo")
    (tmp_path / "presets" / "other.yaml").write_text("lff:\n  epochs: 3\n")
    with pytest.raises(DiffinjectError, match="section 'lff' is not one a preset may set"):
        preset_stage.run(load_params(REPO / "params.yaml"), tmp_path, name="other")
