"""The classifier stages on Colored MNIST for several seeds, as one table.

For each seed s, `prepare` writes a fresh data/prepared with seed s (so the split, the colours and
which samples conflict change with the seed) into a temporary root, and train_biased, mine, vanilla,
lff, train_debiased and evaluate run there with `seed: s` — the stages' own `run()` functions, at the
params of params.yaml plus any `--set section.key=value` overrides. The diffusion stages do not run, so
train_debiased has no pool (`debiased.pool: null`) unless `--set debiased.pool=PATH` gives one.

    python benchmarks/seeds_table.py                       # seeds 0 1 2, params.yaml
    python benchmarks/seeds_table.py --set lff.epochs=100  # a variant

Prints per-seed rows, then mean ± std; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from diffinject.config import load_params
from diffinject.stages import evaluate, lff, mine, prepare, train_biased, train_debiased, vanilla
from diffinject.stages.common import PREPARED

REPO = Path(__file__).resolve().parents[1]
TRAINING = (("train_biased", train_biased), ("mine", mine), ("vanilla", vanilla), ("lff", lff),
            ("train_debiased", train_debiased), ("evaluate", evaluate))
MODELS = ("vanilla", "biased", "lff", "debiased")


def apply_overrides(params: dict, overrides: list[str]) -> dict:
    params = copy.deepcopy(params)
    for item in overrides:
        key, _, value = item.partition("=")
        *path, leaf = key.split(".")
        node = params
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return params


def run_seed(params: dict, seed: int, root: Path) -> dict:
    params = dict(params, seed=seed)
    params.setdefault("trainer", {})["enable_progress_bar"] = False
    seconds = {}
    start = time.perf_counter()
    prepare.run(params, out_dir=root / PREPARED, plots_dir=root / "metrics" / "plots" / "prepare")
    seconds["prepare"] = time.perf_counter() - start
    out = {}
    for name, stage in TRAINING:
        start = time.perf_counter()
        out[name] = stage.run(params, root)
        seconds[name] = time.perf_counter() - start
    row = {"seed": seed, "precision": out["mine"]["precision"], "recall": out["mine"]["recall"]}
    for model in MODELS:
        row[f"{model}_test_acc"] = out["evaluate"][model]["test"]["acc"]
        row[f"{model}_test_conflict_acc"] = out["evaluate"][model]["test"]["conflict_acc"]
        row[f"{model}_best_epoch"] = json.loads((root / "metrics" / f"{model}.json").read_text())["best_epoch"]
    row["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    params = apply_overrides(load_params(args.params), ["debiased.pool=null", *args.overrides])
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix=f"seeds-{seed}-") as tmp:
            rows.append(run_seed(params, seed, Path(tmp)))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    keys = ["precision", "recall"] + [f"{m}_test_acc" for m in MODELS]
    print("| seed | mining precision | mining recall | " + " | ".join(f"{m} test acc" for m in MODELS) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for row in rows:
        print(f"| {row['seed']} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |")
    summary = {k: {"mean": statistics.fmean(r[k] for r in rows),
                   "std": statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0} for k in keys}
    print("| mean ± std | " + " | ".join(f"{summary[k]['mean']:.3f} ± {summary[k]['std']:.3f}" for k in keys) + " |")
    print(json.dumps({"overrides": args.overrides, "rows": rows, "summary": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
