"""Scale-out smoke tests on the CPU: Lightning DDP over gloo with 2 processes trains a classifier and the
DDPM to valid checkpoints, and the inject stage sharded over 2 torchrun ranks writes the same synthetic
set as one process. The same commands run on GPUs with trainer.accelerator gpu (README, "Beyond one
machine")."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import inverted_repo, make_root
from tests.test_faults import INJECT, TRAINER, hashes, run_stage, stage_env

pytestmark = pytest.mark.slow  # two processes, each importing torch and Lightning
DDP = {**TRAINER, "strategy": "ddp", "devices": 2}


def test_ddp_two_processes_train_a_classifier(prepared_mnist, tmp_path):
    from diffinject.models.checkpoint import load_classifier

    root = make_root(tmp_path, prepared_mnist)
    run_stage(root, "train_biased", {"seed": 0, "trainer": DDP, "biased": {"epochs": 2, "select": "best"}})
    net, cfg, meta = load_classifier(root / "models" / "biased", num_classes=10, image_shape=(3, 28, 28))
    assert meta["best_epoch"] in (1, 2) and cfg.arch == "mlp"


def test_ddp_two_processes_train_the_ddpm(prepared_mnist, tmp_path):
    from diffinject.diffusion.model import load_diffusion

    root = make_root(tmp_path, prepared_mnist)
    run_stage(root, "train_diffusion", {"seed": 0, "trainer": DDP, "injection": {"n_inv_step": 4, "n_gen_step": 4},
                                        "diffusion": {"block_out_channels": [8, 16], "norm_num_groups": 4, "train_steps": 6,
                                                      "checkpoint_every": 3, "batch_size": 16, "warmup_steps": 2,
                                                      "sample_grid": 4, "sample_steps": 4}})
    unet, _ = load_diffusion(root / "models" / "diffusion", image_shape=(3, 28, 28))
    assert list(unet.config.block_out_channels) == [8, 16]


def test_inject_on_two_ranks_equals_one_process(tiny_ddpm, prepared_mnist, tmp_path):
    unet, scheduler = tiny_ddpm
    single = inverted_repo(tmp_path / "single", prepared_mnist, unet, scheduler, 6)
    run_stage(single, "inject", INJECT)
    sharded = inverted_repo(tmp_path / "sharded", prepared_mnist, unet, scheduler, 6)
    (sharded / "params.yaml").write_text((single / "params.yaml").read_text())
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "diffinject", "inject"], cwd=sharded, env=stage_env(sharded),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert hashes(single / "data" / "synthetic") == hashes(sharded / "data" / "synthetic")
