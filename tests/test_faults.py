"""Kill and resume: a stage killed with SIGKILL mid-run (a real process, `python -m diffinject STAGE`)
leaves no half-written output, and its re-run ends with the files of an uninterrupted run; a run left
RUNNING in MLflow by the killed process is marked FAILED by the next one."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import yaml

from tests.conftest import REPO, inverted_repo, make_root

pytestmark = pytest.mark.slow  # each case runs a stage three times in fresh processes
TRAINER = {"accelerator": "cpu", "enable_progress_bar": False}


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def stage_env(root: Path) -> dict[str, str]:
    env = dict(os.environ, DVC_ROOT=str(root), PYTHONHASHSEED="0", PYTHONPATH=str(REPO / "src"))
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_stage(root: Path, stage: str, params: dict) -> subprocess.CompletedProcess:
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, "-m", "diffinject", stage], cwd=root, env=stage_env(root),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def kill_when(root: Path, stage: str, params: dict, ready: Callable[[str], bool], timeout_s: float = 300) -> None:
    """Start the stage and SIGKILL it as soon as `ready(stderr so far)` holds. Progress lines come at
    every batch (DIFFINJECT_LOG_INTERVAL_S 0), so a kill point can be a training step."""
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    log = root.parent / f"{root.name}-{stage}.log"
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "diffinject", stage], cwd=root,
                                env=dict(stage_env(root), DIFFINJECT_LOG_INTERVAL_S="0"), stdout=fh, stderr=fh)
        deadline = time.monotonic() + timeout_s
        try:
            while not ready(log.read_text()):
                assert proc.poll() is None, f"{stage} ended (rc {proc.returncode}) before the kill point: {log.read_text()[-1000:]}"
                assert time.monotonic() < deadline, f"{stage}: kill point not reached in {timeout_s} s"
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


INJECT = {"seed": 3, "trainer": TRAINER,
          "injection": {"n_gen_step": 6, "n_inv_step": 6, "n_samples": 24, "n_samples_ratio": None, "batch_size": 4,
                        "label_from": "content"}}


def test_inject_killed_mid_pool_resumes_to_identical_files(tiny_ddpm, prepared_mnist, tmp_path):
    unet, scheduler = tiny_ddpm
    whole = inverted_repo(tmp_path / "whole", prepared_mnist, unet, scheduler, 6)
    run_stage(whole, "inject", INJECT)
    killed = inverted_repo(tmp_path / "killed", prepared_mnist, unet, scheduler, 6)
    kill_when(killed, "inject", INJECT, lambda _: len(list((killed / "data").glob(".synthetic-partial-*/batch_*.json"))) >= 2)
    assert not (killed / "data" / "synthetic").exists()  # nothing half-written where DVC looks
    out = run_stage(killed, "inject", INJECT).stdout
    assert "resuming" in out
    assert hashes(whole / "data" / "synthetic") == hashes(killed / "data" / "synthetic")
    assert not list((killed / "data").glob(".synthetic-partial-*"))


# progress lines on: they are the kill point (kill_when)
CLASSIFIER = {"seed": 0, "trainer": {**TRAINER, "enable_progress_bar": True}, "biased": {"epochs": 3, "select": "last"},
              "debiased": {"epochs": 3, "pool": None}}


@pytest.mark.parametrize("stage,out", [("train_biased", "models/biased"), ("train_debiased", "models/debiased")])
def test_classifier_killed_mid_training_reruns_to_identical_weights(stage, out, prepared_mnist, tmp_path):
    whole = make_root(tmp_path, prepared_mnist, "whole")
    run_stage(whole, stage, CLASSIFIER)
    killed = make_root(tmp_path, prepared_mnist, "killed")
    kill_when(killed, stage, CLASSIFIER, lambda log: "epoch 2/3" in log)  # mid-training: the second of three epochs
    assert not (killed / out).exists()
    run_stage(killed, stage, CLASSIFIER)
    assert hashes(whole / out) == hashes(killed / out)


def test_train_diffusion_killed_resumes_from_its_checkpoint(prepared_mnist, tmp_path):
    params = {"seed": 0, "trainer": TRAINER, "diffusion": {
        "block_out_channels": [8, 16], "norm_num_groups": 4, "train_steps": 40, "checkpoint_every": 10,
        "batch_size": 16, "warmup_steps": 4, "sample_grid": 4, "sample_steps": 4},
        "injection": {"n_inv_step": 4, "n_gen_step": 4}}
    root = make_root(tmp_path, prepared_mnist)
    kill_when(root, "train_diffusion", params, lambda _: bool(list((root / "models").glob(".diffusion-resume/*/last.ckpt"))))
    assert not (root / "models" / "diffusion").exists()
    out = run_stage(root, "train_diffusion", params).stdout
    assert "resuming from" in out
    from diffinject.diffusion.model import load_diffusion
    unet, _ = load_diffusion(root / "models" / "diffusion", image_shape=(3, 28, 28))
    assert list(unet.config.block_out_channels) == [8, 16]
    assert not list((root / "models").glob(".diffusion-resume/*/last.ckpt"))


def test_a_run_left_running_by_a_killed_process_is_marked_failed(tmp_path):
    """A process that starts a pipeline's MLflow run and dies by SIGKILL inside it; the next process to
    open the store marks that run FAILED (and leaves a live process's run alone)."""
    from mlflow.tracking import MlflowClient

    from diffinject.tracking import runs

    env = dict(stage_env(tmp_path), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    script = ("import os, signal, mlflow\n"
              "from diffinject.tracking import runs\n"
              "exp = runs.setup_experiment('faults')\n"
              "run = mlflow.start_run(experiment_id=exp, tags=runs.owner_tags())\n"
              "print(run.info.run_id, flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    dead_run = done.stdout.split()[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        experiment = client.get_experiment_by_name("faults").experiment_id
        live = client.create_run(experiment, tags=runs.owner_tags()).info.run_id  # this process: alive
        assert client.get_run(dead_run).info.status == "RUNNING"
        runs.setup_experiment("faults")
        assert client.get_run(dead_run).info.status == "FAILED"
        assert "ended without closing the run" in client.get_run(dead_run).data.tags["diffinject.failure"]
        assert client.get_run(live).info.status == "RUNNING"
