"""The README's "Beyond one machine" DVC commands, run on a clone of this repository: a DVC remote (a
local folder standing in for s3://...) that `dvc push` fills and `dvc pull` restores from, byte for
byte; and `dvc exp run --queue` + `dvc queue start`, whose experiments run outside the workspace with
their own params. The `prepare` stage stands in for the pipeline (seconds, not minutes)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow
DVC = Path(sys.executable).with_name("dvc")


def dvc(repo: Path, *args: str, timeout: float = 300) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONHASHSEED="0",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("DVC_ROOT", None)
    done = subprocess.run([str(DVC), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"dvc {' '.join(args)}: {done.stdout[-1500:]}{done.stderr[-1500:]}"
    return done.stdout


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def clone(tmp_path) -> Path:
    if not DVC.is_file():
        pytest.skip(f"dvc not installed beside {sys.executable}")
    repo = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(repo)], check=True)
    for key, value in (("user.email", "test@diffinject.local"), ("user.name", "diffinject test")):
        subprocess.run(["git", "config", key, value], cwd=repo, check=True)
    return repo


def test_push_to_a_remote_and_pull_back_restores_the_same_bytes(clone, tmp_path):
    dvc(clone, "repro", "prepare")
    before = tree_hashes(clone / "data" / "prepared")
    dvc(clone, "remote", "add", "-d", "store", str(tmp_path / "remote"))
    dvc(clone, "push", "prepare")
    shutil.rmtree(clone / "data" / "prepared")
    shutil.rmtree(clone / ".dvc" / "cache")
    dvc(clone, "pull", "prepare")
    assert tree_hashes(clone / "data" / "prepared") == before and len(before) > 5000


def test_queued_experiments_run_with_their_own_params(clone):
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "queue test"], cwd=clone, check=True)
    for seed in (1, 2):
        dvc(clone, "exp", "run", "--queue", "prepare", "-S", f"seed={seed}", "-n", f"seed-{seed}")
    dvc(clone, "queue", "start", "-j", "1")
    deadline = time.monotonic() + 300
    while True:
        status = dvc(clone, "queue", "status")
        if not any(word in status for word in ("Queued", "Running")):
            break
        assert time.monotonic() < deadline, status
        time.sleep(2)
    dvc(clone, "queue", "stop")
    assert "Failed" not in status, status
    rows = json.loads(dvc(clone, "exp", "show", "--json"))
    seeds = {}
    for commit in rows:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs", []):
                data = rev.get("data") or {}
                if rev.get("name", "").startswith("seed-"):
                    seeds[rev["name"]] = data["params"]["params.yaml"]["data"]["seed"]
    assert seeds == {"seed-1": 1, "seed-2": 2}, rows
    assert not (clone / "data" / "prepared").exists()  # they ran outside the workspace
