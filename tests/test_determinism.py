"""Same params, same machine, same bytes: the pipeline's spine (prepare -> train_biased -> mine ->
train_diffusion -> invert -> inject -> train_debiased -> evaluate), reduced to a tiny DDPM and one
epoch, run twice in two fresh processes gives byte-identical data (prepared, conflicts, synthetic),
models and metrics (timings aside)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow
STAGES = ("prepare", "train_biased", "mine", "lff", "train_diffusion", "invert", "inject", "train_debiased", "evaluate")
REDUCED = {
    "seed": 0,
    "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
    "biased": {"epochs": 1},
    "mine": {"k": 2},
    "diffusion": {"block_out_channels": [8, 16], "norm_num_groups": 4, "train_steps": 20, "checkpoint_every": 10,
                  "batch_size": 16, "warmup_steps": 2, "sample_grid": 4, "sample_steps": 4},
    "lff": {"epochs": 1},
    # the pilot on two candidates (its scores land in metrics/inject.json, so they must repeat too)
    "injection": {"pilot_size": 8, "pilot_grid": ["operator=channel_stats,site=up0+up1,t_max=300,label_from=style",
                                                  "operator=slerp,site=h,h_gamma=0.7,label_from=content"],
                  "n_inv_step": 4, "n_gen_step": 4, "n_samples": 16, "n_samples_ratio": None, "batch_size": 8,
                  "styles_per_class": 2},
    "debiased": {"epochs": 1},
    "evaluate": {"models": ["biased", "debiased"]},
}
# metrics that are measurements of the machine, not results
TIMING_WORDS = ("seconds", "per_s", "per_second", "elapsed", "precision")


def run_pipeline(root: Path) -> None:
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(REDUCED))
    # one process for the whole spine (imports once), each stage through its CLI entry point
    script = ("from diffinject import cli\n"
              f"for stage in {STAGES!r}:\n"
              "    assert cli.main([stage]) == 0, stage\n")
    env = dict(os.environ, DVC_ROOT=str(root), PYTHONHASHSEED="0", PYTHONPATH=str(REPO / "src"))
    done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def file_hashes(root: Path, *folders: str) -> dict[str, str]:
    out = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*")) if (root / folder).is_dir() else [root / folder]:
            if path.is_file():
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def results(root: Path) -> dict[str, object]:
    def drop_timings(tree):
        if isinstance(tree, dict):
            return {k: drop_timings(v) for k, v in tree.items() if not any(w in k for w in TIMING_WORDS)}
        return tree

    return {p.name: drop_timings(json.loads(p.read_text())) for p in sorted((root / "metrics").glob("*.json"))}


def test_two_runs_give_identical_data_models_and_metrics(tmp_path):
    run_pipeline(tmp_path / "a")
    run_pipeline(tmp_path / "b")
    data = ("data/prepared", "data/conflicts.csv", "data/synthetic", "data/inversions", "models/biased", "models/debiased",
            "models/diffusion")
    a, b = file_hashes(tmp_path / "a", *data), file_hashes(tmp_path / "b", *data)
    assert any(k.startswith("data/synthetic/images/") for k in a)
    assert a == b, sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))[:10]
    assert results(tmp_path / "a") == results(tmp_path / "b")
    assert "eval.json" in results(tmp_path / "a")
