"""Every preset params.yaml documents (a `# preset NAME: {dotted.key: value, ...}` comment) is valid:
its configs build, its DDPM builds at its image size and one training step runs."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import yaml

from diffinject.config import load_params, section
from diffinject.data.prepare import DataConfig
from diffinject.diffusion.model import DiffusionConfig, build_scheduler, build_unet
from diffinject.diffusion.training import DiffusionModule
from tests.conftest import REPO

PARAMS_YAML = REPO / "params.yaml"


def documented_presets() -> dict[str, dict]:
    """name -> {dotted key: value} from the preset comments (a preset may span several comment lines)."""
    text = PARAMS_YAML.read_text()
    presets = {}
    for match in re.finditer(r"#\s+preset (\w+): (\{[^}]*\})", text):
        body = re.sub(r"\n\s*#\s*", " ", match.group(2))  # join the comment's continuation lines
        presets[match.group(1)] = yaml.safe_load(body)
    return presets


def with_preset(params: dict, preset: dict) -> dict:
    out = copy.deepcopy(params)
    for dotted, value in preset.items():
        name, key = dotted.split(".", 1)
        out.setdefault(name, {})[key] = value
    return out


def test_params_yaml_documents_the_gpu_preset():
    assert "gpu" in documented_presets()


@pytest.mark.parametrize("name", sorted(documented_presets()))
def test_each_documented_preset_builds_and_trains_a_step(name):
    params = with_preset(load_params(PARAMS_YAML), documented_presets()[name])
    data = section(params, "data", DataConfig)
    cfg = section(params, "diffusion", DiffusionConfig)
    unet, scheduler = build_unet(cfg, data.image_size, 3), build_scheduler(cfg)
    module = DiffusionModule(unet, scheduler, cfg.lr, cfg.warmup_steps, cfg.train_steps, cfg.ema_decay)
    optimizer = module.configure_optimizers()["optimizer"]
    torch.manual_seed(0)
    batch = (torch.randint(0, 256, (2, 3, data.image_size, data.image_size), dtype=torch.uint8),)
    loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert sum(p.numel() for p in unet.parameters()) > 1_000_000


def test_the_gpu_preset_at_28_px_is_a_one_line_error():
    """What a user who left data.image_size at 28 gets."""
    from diffinject.errors import DiffinjectError

    preset = {k: v for k, v in documented_presets()["gpu"].items() if k != "data.image_size"}
    cfg = section(with_preset(load_params(PARAMS_YAML), preset), "diffusion", DiffusionConfig)
    with pytest.raises(DiffinjectError, match="28 px is not divisible by 8"):
        build_unet(cfg, 28, 3)
