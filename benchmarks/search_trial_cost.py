"""Benchmark: the cost of one search trial that reuses the cached inversions (what `search` does: inject,
train_debiased, evaluate on valid) against one that re-inverts first (invert + the same), side by side
in one run. Goal (issue 5): cached / re-inverting <= 0.5.

    python benchmarks/search_trial_cost.py [--repo .] [--repeats 1]

Needs a repository where `dvc repro inject` has run (data/prepared, data/conflicts.csv, data/inversions,
models/{biased,diffusion,judge,vanilla}). Both trials run the search's own trial pipeline on the repo's
params (trial overrides included) in their own folders, alternating; MLflow logging is not included.
Prints one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import optuna

from diffinject.config import load_params
from diffinject.stages import invert, search
from diffinject.stages.paths import MODELS, PREPARED
from diffinject.tracking.search import ValidationCurve, overlay

REPO = Path(__file__).resolve().parents[1]
GOAL = 0.5
SHARED = (PREPARED, MODELS / "diffusion", MODELS / "judge", MODELS / "vanilla")
CACHED = (invert.OUT,)  # data/inversions
TO_REINVERT = (invert.CONFLICTS, MODELS / "biased")  # what invert reads besides the shared inputs


def trial_root(repo: Path, root: Path, inputs: tuple[Path, ...]) -> Path:
    for rel in inputs:
        if not (repo / rel).exists():
            raise SystemExit(f"{repo / rel}: not found (run `dvc repro inject` in {repo} first)")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to((repo / rel).resolve())
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    repo = args.repo.resolve()
    params = load_params(repo / "params.yaml")
    setup = search.setup_for(params)
    params = overlay(params, setup.fixed)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())  # in memory
    times: dict[str, list[float]] = {"cached": [], "reinvert": [], "invert_only": []}
    with tempfile.TemporaryDirectory(prefix="trial-cost-") as tmp:
        for i in range(args.repeats):
            for kind in ("cached", "reinvert"):
                root = trial_root(repo, Path(tmp) / f"{kind}-{i}", SHARED + (CACHED if kind == "cached" else TO_REINVERT))
                curve = ValidationCurve(study.ask(), setup.curve_column, setup.running_best, lambda rows: None)
                start = time.perf_counter()
                if kind == "reinvert":
                    invert.run(params, root)
                    times["invert_only"].append(time.perf_counter() - start)
                setup.pipeline(params, root, curve)
                times[kind].append(time.perf_counter() - start)
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    print(json.dumps({
        "benchmark": "search_trial_cost", "python": platform.python_version(), "cpus": os.cpu_count(),
        "omp_threads": os.environ.get("OMP_NUM_THREADS"), "repeats": args.repeats,
        "seconds": {k: [round(x, 1) for x in v] for k, v in times.items()},
        "ratio_cached_over_reinvert": round(mean["cached"] / mean["reinvert"], 3), "goal": GOAL,
    }))


if __name__ == "__main__":
    main()
