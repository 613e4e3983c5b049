"""Where the stores live (main repository, also from a DVC temp copy), and what a pipeline run logs:
flattened params and metrics, DVC hashes from dvc.lock, run names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffinject.errors import DiffinjectError
from diffinject.tracking import dvc_lock, metrics_files, runs, store


@pytest.fixture
def clean_env(monkeypatch):
    for name in (store.ENV_DVC_ROOT, store.ENV_TRACKING_URI, runs.ENV_EXP_NAME):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def git_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git("init", "-q", cwd=path)
    git("config", "user.email", "t@example.com", cwd=path)
    git("config", "user.name", "t", cwd=path)
    (path / "f").write_text("x")
    git("add", "f", cwd=path)
    git("commit", "-qm", "init", cwd=path)
    return path


def test_dvc_root_env_wins(clean_env, tmp_path):
    clean_env.setenv("DVC_ROOT", str(tmp_path / "main"))
    assert store.main_repo_root(tmp_path / "elsewhere") == (tmp_path / "main").resolve()


def test_dvc_temp_copy_resolves_to_the_parent_repository(clean_env, tmp_path):
    temp = tmp_path / "main" / ".dvc" / "tmp" / "exps" / "tmpabc123" / "sub"
    temp.mkdir(parents=True)
    assert store.main_repo_root(temp) == (tmp_path / "main").resolve()
    assert store.tracking_uri(temp) == f"sqlite:///{(tmp_path / 'main').resolve()}/mlruns/mlflow.db"


def test_git_worktree_resolves_to_the_main_checkout(clean_env, tmp_path):
    main = git_repo(tmp_path / "main")
    git("worktree", "add", "-q", str(tmp_path / "wt"), cwd=main)
    assert store.main_repo_root(tmp_path / "wt") == main.resolve()
    assert store.main_repo_root(main / ".") == main.resolve()


def test_outside_git_is_the_working_directory(clean_env, tmp_path):
    assert store.main_repo_root(tmp_path) == tmp_path.resolve()


def test_tracking_uri_env_overrides_and_artifacts_sit_beside_a_sqlite_db(clean_env, tmp_path):
    clean_env.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert store.tracking_uri(tmp_path) == "http://127.0.0.1:5000"
    assert store.artifact_location("http://127.0.0.1:5000") is None
    assert store.artifact_location("sqlite:////data/x/mlflow.db") == "file:///data/x/artifacts"
    assert store.optuna_storage_url(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlruns/optuna.db"
    assert store.optuna_storage_url("postgresql://u:p@h/db", tmp_path) == "postgresql://u:p@h/db"
    with pytest.raises(DiffinjectError, match="needs a file path"):
        store.sqlite_path("sqlite://")


def test_flatten_and_param_values():
    params = {"seed": 0, "data": {"split": {"train": 0.8}, "path": None}, "diffusion": {"channels": [16, 32]},
              "trainer": {"deterministic": True}, "data2": {"source": "mnist5k"}}
    flat = {k: runs.param_value(v) for k, v in metrics_files.flatten(params).items()}
    assert flat == {"seed": "0", "data.split.train": "0.8", "data.path": "null", "diffusion.channels": "[16, 32]",
                    "trainer.deterministic": "true", "data2.source": "mnist5k"}


def test_metric_keys_eval_at_top_level_others_prefixed_numbers_only(tmp_path):
    m = tmp_path / "metrics"
    m.mkdir()
    (m / "eval.json").write_text(json.dumps({"debiased": {"test": {"acc": 0.5, "dp_gap": 0.1}}}))
    (m / "inject.json").write_text(json.dumps({"label_fidelity": 0.9, "label_from": "content", "not_measured": ["x"]}))
    (m / "validation.json").write_text(json.dumps({"success": True, "conflict_fraction": {"train": 0.01}}))
    (m / "register.json").write_text(json.dumps({"version": 3}))  # the registry's own output: not a pipeline metric
    assert metrics_files.read_metrics(m) == {"debiased.test.acc": 0.5, "debiased.test.dp_gap": 0.1,
                                    "inject/label_fidelity": 0.9, "validation/conflict_fraction.train": 0.01}
    with pytest.raises(metrics_files.MissingMetricError, match=r"'debiased.valid.acc' not found .* \(has debiased.test.acc"):
        metrics_files.require_metric(metrics_files.read_metrics(m), "debiased.valid.acc", m, "registry.metric")


def test_dvc_hashes_from_the_lock_skip_metrics_and_name_a_missing_md5(tmp_path):
    lock = {"schema": "2.0", "stages": {
        "prepare": {"outs": [{"path": "data/prepared", "md5": "abc.dir"},
                             {"path": "metrics/plots/prepare/samples_train.png", "md5": "f00"}]},
        "train_debiased": {"outs": [{"path": "models/debiased", "md5": "def.dir"}]},
    }}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert dvc_lock.dvc_hashes(tmp_path / "dvc.lock") == {"dvc.data/prepared.md5": "abc.dir", "dvc.models/debiased.md5": "def.dir"}
    lock["stages"]["inject"] = {"outs": [{"path": "data/synthetic", "etag": "x"}]}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    with pytest.raises(DiffinjectError, match="'inject' out 'data/synthetic' has no md5"):
        dvc_lock.dvc_hashes(tmp_path / "dvc.lock")
    with pytest.raises(DiffinjectError, match="not found"):
        dvc_lock.dvc_hashes(tmp_path / "nope.lock")


def test_run_name_is_the_dvc_experiment_else_commit_and_time(clean_env, tmp_path):
    repo = git_repo(tmp_path / "repo")
    name = runs.run_name(repo)
    assert name.startswith(git("rev-parse", "--short=7", "HEAD", cwd=repo) + "-") and len(name) == 7 + 1 + 15
    clean_env.setenv("DVC_EXP_NAME", "zesty-lamb")
    assert runs.run_name(repo) == "zesty-lamb"


def test_curve_without_epoch_column_is_one_line(tmp_path):
    (tmp_path / "c.csv").write_text("step,valid/acc\n1,0.5\n")
    with pytest.raises(DiffinjectError, match="no 'epoch' column"):
        metrics_files.read_curve(tmp_path / "c.csv")


PROBE = """
import json, os, pathlib, yaml
from diffinject.tracking import store
lock = yaml.safe_load(pathlib.Path("dvc.lock").read_text())
json.dump({"root": str(store.main_repo_root()), "uri": store.tracking_uri(), "exp": os.environ.get("DVC_EXP_NAME"),
           "upstream_md5": lock["stages"]["make"]["outs"][0]["md5"]}, open("probe.json", "w"))
"""


@pytest.mark.slow
def test_dvc_exp_run_temp_resolves_the_main_repo_and_sees_the_fresh_lock(clean_env, tmp_path):
    """Under `dvc exp run --temp` a stage runs in .dvc/tmp/exps/<tmp>/; the store must still be the main
    repository's, and dvc.lock must already hold the upstream stage's new hash (register reads it)."""
    repo = git_repo(tmp_path / "repo")
    (repo / "probe.py").write_text(PROBE)
    (repo / "params.yaml").write_text("x: 1\n")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "make": {"cmd": "python -c \"import yaml; open('out.txt', 'w').write(str(yaml.safe_load(open('params.yaml'))['x']))\"",
                 "params": ["x"], "outs": ["out.txt"]},
        "probe": {"cmd": "python probe.py", "deps": ["out.txt", "probe.py"], "outs": [{"probe.json": {"cache": False}}]},
    }}))
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    run = lambda *cmd: subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, check=True)  # noqa: E731
    run("dvc", "init", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "pipeline")
    run("dvc", "exp", "run", "--temp", "-S", "x=2", "-n", "exp-two")
    run("dvc", "exp", "apply", "exp-two")
    probe = json.loads((repo / "probe.json").read_text())
    final_lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert probe["root"] == str(repo.resolve()) and ".dvc/tmp" not in probe["uri"]
    assert probe["exp"] == "exp-two"
    assert probe["upstream_md5"] == final_lock["stages"]["make"]["outs"][0]["md5"]
    assert (repo / "out.txt").read_text() == "2"
    shutil.rmtree(repo / ".dvc" / "tmp", ignore_errors=True)
