"""Benchmark: the cost of one search trial that reuses the cached inversions (what `search` does: inject,
train_debiased, evaluate on valid) against one that re-inverts first (invert + the same), side by side
in one run. Goal (issue 5): cached / re-inverting <= 0.5.

    python benchmarks/search_trial_cost.py [--repo .] [--repeats 1]

Needs a repository where `dvc repro inject` has run (data/prepared, data/conflicts.csv, data/inversions,
models/{biased,diffusion}; models/{judge,vanilla,lff} and metrics/probe.json are linked when present, as
the search links them), and metrics/eval.json unless `search.model` is set. Both trials run the search's
own trial pipeline on the repo's params with the same draw of the searched values (the search's own
`suggest`, then its fixed trial overrides) in their own folders, alternating; MLflow logging is not
included. Prints one JSON object on the last line.
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
from diffinject.stages.paths import CONFLICTS, INVERSIONS, MODELS
from diffinject.tracking.search import ValidationCurve, overlay
from diffinject.tracking.search.config import suggest

REPO = Path(__file__).resolve().parents[1]
GOAL = 0.5
# What a search trial's folder links (search.REQUIRED always, search.OPTIONAL when present), less the
# cached inversions; a cached trial links those, a re-inverting one what invert reads besides.
SHARED = tuple(rel for rel in search.REQUIRED if rel != INVERSIONS)
OPTIONAL = search.OPTIONAL
CACHED = (INVERSIONS,)  # data/inversions
TO_REINVERT = (CONFLICTS, MODELS / "biased")  # what invert reads besides the shared inputs


def trial_root(repo: Path, root: Path, inputs: tuple[Path, ...], optional: tuple[Path, ...] = ()) -> Path:
    for rel in inputs + tuple(rel for rel in optional if rel not in inputs):
        if not (repo / rel).exists():
            if rel in optional and rel not in inputs:
                continue
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
    setup, _ = search.setup_for(params, repo)
    cfg = getattr(search.PARAMS.load(params), search.SECTION)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner(),  # in memory
                                sampler=optuna.samplers.RandomSampler(seed=params.get("seed", 0)))
    times: dict[str, list[float]] = {"cached": [], "reinvert": [], "invert_only": []}
    with tempfile.TemporaryDirectory(prefix="trial-cost-") as tmp:
        for i in range(args.repeats):
            # one draw of the searched values (setting, gamma, ratio, lr) per repeat, shared by both sides,
            # and the trial's params as the search builds them (stages.search / tracking.search.objective)
            values = suggest(study.ask(), cfg, setup.model, setup.settings)
            trial_params = overlay(params, {**values, **setup.fixed})
            for kind in ("cached", "reinvert"):
                root = trial_root(repo, Path(tmp) / f"{kind}-{i}", SHARED + (CACHED if kind == "cached" else TO_REINVERT),
                                  OPTIONAL)
                curve = ValidationCurve(study.ask(), setup.curve_column, setup.running_best, lambda rows: None)
                start = time.perf_counter()
                if kind == "reinvert":
                    invert.run(trial_params, root)
                    times["invert_only"].append(time.perf_counter() - start)
                setup.pipeline(trial_params, root, curve)
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
