"""Kill and resume: a stage killed with SIGKILL mid-run (a real process, `python -m diffinject STAGE`)
leaves no half-written output, and its re-run ends with the files of an uninterrupted run; a run left
RUNNING in MLflow by the killed process is marked FAILED by the next one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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
          "injection": {"auto": False, "n_gen_step": 6, "n_inv_step": 6, "n_samples": 24, "n_samples_ratio": None, "batch_size": 4,
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


def test_train_diffusion_killed_resumes_to_the_uninterrupted_weights(prepared_mnist, tmp_path):
    """Killed after its step-10 checkpoint; the re-run resumes there (mid-epoch) and ends with the
    weights, grid and metrics of a run never killed (timings aside)."""
    params = {"seed": 0, "trainer": TRAINER, "diffusion": {
        "block_out_channels": [8, 16], "norm_num_groups": 4, "train_steps": 40, "checkpoint_every": 10,
        "batch_size": 16, "warmup_steps": 4, "sample_grid": 4, "sample_steps": 4},
        "injection": {"auto": False, "n_inv_step": 4, "n_gen_step": 4}}
    whole = make_root(tmp_path, prepared_mnist, "whole")
    run_stage(whole, "train_diffusion", params)
    root = make_root(tmp_path, prepared_mnist, "killed")
    kill_when(root, "train_diffusion", params, lambda _: bool(list((root / "models").glob(".diffusion-resume/*/last.ckpt"))))
    assert not (root / "models" / "diffusion").exists()
    out = run_stage(root, "train_diffusion", params).stdout
    assert "resuming from" in out
    assert hashes(root / "models" / "diffusion") == hashes(whole / "models" / "diffusion")
    assert hashes(root / "metrics" / "plots") == hashes(whole / "metrics" / "plots")
    untimed = [{k: v for k, v in json.loads((r / "metrics" / "diffusion.json").read_text()).items() if k != "train_seconds"}
               for r in (whole, root)]
    assert untimed[0] == untimed[1]
    assert not list((root / "models").glob(".diffusion-resume/*/last.ckpt"))


@pytest.fixture(scope="module")
def spine(tmp_path_factory) -> Path:
    """A repository after the reduced spine of test_determinism (prepare ... evaluate): read-only, copied."""
    from tests.test_determinism import run_pipeline

    root = tmp_path_factory.mktemp("spine") / "repo"
    run_pipeline(root)
    return root


def copy_of(spine: Path, dest: Path) -> Path:
    shutil.copytree(spine, dest, symlinks=True)
    return dest


def spine_params(**sections) -> dict:
    from tests.test_determinism import REDUCED

    return {**REDUCED, **{k: {**REDUCED.get(k, {}), **v} for k, v in sections.items()}}


def test_invert_killed_mid_styles_reruns_to_identical_inversions(spine, tmp_path):
    """40 inversion steps (not the spine's 4), so the kill lands inside the style batches."""
    params = spine_params(injection={"n_inv_step": 40})
    whole = copy_of(spine, tmp_path / "whole")
    run_stage(whole, "invert", params)
    killed = copy_of(spine, tmp_path / "killed")
    before = hashes(killed / "data" / "inversions")
    kill_when(killed, "invert", params, lambda log: "invert: style batches" in log)
    assert hashes(killed / "data" / "inversions") == before  # the last run's inversions, untouched
    run_stage(killed, "invert", params)
    assert hashes(killed / "data" / "inversions") == hashes(whole / "data" / "inversions")
    assert hashes(whole / "data" / "inversions") != before  # 40 steps, not the spine's 4: a real re-run


def _mlflow_db(root: Path) -> Path:
    return root / "mlruns" / "mlflow.db"


def _running_runs(root: Path) -> int:
    import sqlite3

    if not _mlflow_db(root).is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{_mlflow_db(root)}?mode=ro", uri=True, timeout=0.1) as db:
            return db.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]
    except sqlite3.OperationalError:  # no schema yet, or locked by the writer this instant
        return 0


def _register_twice(spine: Path, tmp_path: Path) -> tuple[dict, Path, Path]:
    """(params, a copy where register ran uninterrupted, a copy to kill it in)."""
    params = spine_params(registry={"candidates": None})
    lock = {"schema": "2.0", "stages": {"prepare": {"outs": [{"path": "data/prepared", "md5": f"{1:032x}.dir"}]}}}
    whole, killed = (copy_of(spine, tmp_path / name) for name in ("whole", "killed"))
    for root in (whole, killed):  # what `dvc repro` leaves: register logs its hashes
        (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    run_stage(whole, "register", params)
    return params, whole, killed


def _same_registration(whole: Path, killed: Path) -> dict:
    """Both metrics/register.json agree (run ids aside) on version 1, champion; the killed one's."""
    decisions = [json.loads((r / "metrics" / "register.json").read_text()) for r in (whole, killed)]
    run_id = decisions[1]["run_id"]
    for d in decisions:
        d.pop("run_id")
    assert decisions[0] == decisions[1] and decisions[0]["version"] == 1 and decisions[0]["alias"] == "champion"
    return dict(decisions[1], run_id=run_id)


def _no_run_left_running(client) -> None:
    statuses = [r.info.status for r in client.search_runs([e.experiment_id for e in client.search_experiments()])]
    assert "RUNNING" not in statuses and "FAILED" in statuses


def test_register_killed_inside_its_mlflow_run_reruns_to_the_same_registration(spine, tmp_path):
    """Killed as soon as its MLflow run exists (before the model is logged and registered); the re-run
    marks that run FAILED and registers what an uninterrupted run does: version 1, champion."""
    from mlflow.tracking import MlflowClient

    params, whole, killed = _register_twice(spine, tmp_path)
    kill_when(killed, "register", params, lambda _: _running_runs(killed) > 0)
    assert not (killed / "metrics" / "register.json").exists()
    client = MlflowClient(f"sqlite:///{_mlflow_db(killed)}")
    assert not client.search_model_versions()  # the kill came before the registration
    run_stage(killed, "register", params)
    _same_registration(whole, killed)
    _no_run_left_running(client)


# register, SIGKILLed the moment it would set the new version's alias
KILLED_AT_THE_ALIAS = ("import os, signal, sys\n"
                       "from mlflow.tracking import MlflowClient\n"
                       "MlflowClient.set_registered_model_alias = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
                       "from diffinject import cli\n"
                       "sys.exit(cli.main(['register']))\n")


def test_register_killed_between_the_version_and_its_alias_finishes_that_version(spine, tmp_path):
    """The one step of register no file rename can make atomic: the version exists, its alias not yet.
    The re-run gives that version its alias instead of registering the same files again, so the registry
    ends as an uninterrupted run leaves it: one version, the champion."""
    from mlflow.tracking import MlflowClient

    params, whole, killed = _register_twice(spine, tmp_path)
    (killed / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, "-c", KILLED_AT_THE_ALIAS], cwd=killed, env=stage_env(killed),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{_mlflow_db(killed)}")
    (left,) = client.search_model_versions()
    assert not client.get_registered_model(left.name).aliases  # killed in the gap
    rerun = run_stage(killed, "register", params)
    assert "finishing it instead of registering them again" in rerun.stdout
    decision = _same_registration(whole, killed)
    (version,) = client.search_model_versions()
    assert client.get_registered_model(version.name).aliases == {"champion": 1}
    assert version.tags["diffinject.finished_by_run"] == decision["run_id"]
    _no_run_left_running(client)


def test_a_run_left_running_by_a_killed_process_is_marked_failed(tmp_path):
    """A process that starts a pipeline's MLflow run and dies by SIGKILL inside it; the next process to
    open the store marks that run FAILED (and leaves a live process's run alone)."""
    from mlflow.tracking import MlflowClient

    from diffinject.tracking import runs, stale_runs

    env = dict(stage_env(tmp_path), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    script = ("import os, signal, mlflow\n"
              "from diffinject.tracking import runs, stale_runs\n"
              "exp = runs.setup_experiment('faults')\n"
              "run = mlflow.start_run(experiment_id=exp, tags=stale_runs.owner_tags())\n"
              "print(run.info.run_id, flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    dead_run = done.stdout.split()[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        experiment = client.get_experiment_by_name("faults").experiment_id
        live = client.create_run(experiment, tags=stale_runs.owner_tags()).info.run_id  # this process: alive
        assert client.get_run(dead_run).info.status == "RUNNING"
        runs.setup_experiment("faults")
        assert client.get_run(dead_run).info.status == "FAILED"
        assert "ended without closing the run" in client.get_run(dead_run).data.tags["diffinject.failure"]
        assert client.get_run(live).info.status == "RUNNING"
