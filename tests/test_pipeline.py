"""End to end through DVC in a scratch git repository: the commands a user types."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def sh(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture
def scratch_repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    sh(["git", "init", "-q"], repo)
    sh(["git", "config", "user.email", "test@example.com"], repo)
    sh(["git", "config", "user.name", "test"], repo)
    sh(["dvc", "init", "-q"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "scratch"], repo)
    return repo


def test_repro_then_nothing_changed_then_exp_run(scratch_repo):
    out = sh(["dvc", "repro", "validate"], scratch_repo)
    assert "Running stage 'prepare'" in out and "Running stage 'validate'" in out
    report = json.loads((scratch_repo / "metrics" / "validation.json").read_text())
    assert report["success"] and report["conflict_fraction"]["train"] == pytest.approx(0.01)

    again = sh(["dvc", "repro", "validate"], scratch_repo)
    assert "Running stage" not in again and "up to date" in again

    sh(["git", "add", "-A"], scratch_repo)
    sh(["git", "commit", "-qm", "baseline"], scratch_repo)
    exp = sh(["dvc", "exp", "run", "-S", "data.conflict_pct=5", "validate"], scratch_repo)
    assert "Running stage 'prepare'" in exp and "Running stage 'validate'" in exp
    report = json.loads((scratch_repo / "metrics" / "validation.json").read_text())
    assert report["conflict_fraction"]["train"] == pytest.approx(0.05)
