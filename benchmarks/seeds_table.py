"""The classifier stages on Colored MNIST for several seeds, as one table.

For each seed s, `prepare` writes a fresh data/prepared with seed s (so the split, the colours and
which samples conflict change with the seed) into a temporary root, and train_biased, mine, vanilla,
lff, train_debiased and evaluate run there with `seed: s` — the stages' own `run()` functions, at the
params of params.yaml plus any `--set section.key=value` overrides. Without `--diffusion` the diffusion
stages do not run, so train_debiased has no pool (`debiased.pool: null`).

With `--diffusion DIR` (a trained models/diffusion/ folder, e.g. the pipeline's), `probe`, `invert`,
`train_judge` and `inject` run too with that DDPM (the judge only scores the pool's quality report), and train_debiased mixes in the synthetic pool: the DiffInject row. The DDPM has
seen the train images of the split it was trained on, and another seed's split would put some of them
in valid/test, so in this mode the data stay those of `--data-seed` (default: params.yaml's `seed`, the
pipeline's split) and only the training seeds (models, mining, style draws, injection noise) change.

    python benchmarks/seeds_table.py                                    # seeds 0 1 2, no pool
    python benchmarks/seeds_table.py --diffusion models/diffusion       # + DiffInject
    python benchmarks/seeds_table.py --set lff.epochs=100               # a variant

Prints per-seed rows, then mean ± std of the test accuracies and the mean valid accuracy of each model
(the figure to compare settings by; the test split only reports); the last line is one JSON object.
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
from diffinject.stages import (evaluate, inject, invert, lff, mine, prepare, probe, train_biased, train_debiased,
                               train_judge, vanilla)
from diffinject.stages.common import MODELS as MODELS_DIR
from diffinject.stages.common import PREPARED

REPO = Path(__file__).resolve().parents[1]
CLASSIFIERS = (("train_biased", train_biased), ("mine", mine), ("vanilla", vanilla), ("lff", lff))
INJECTION = (("probe", probe), ("invert", invert), ("train_judge", train_judge), ("inject", inject))
DEBIASED = (("train_debiased", train_debiased), ("evaluate", evaluate))
POOL = "data/synthetic/manifest.parquet"
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


def run_seed(params: dict, seed: int, root: Path, data_seed: int | None = None,
             diffusion: Path | None = None) -> dict:
    """All stages for one seed in `root`; data from `data_seed` (None: `seed`), injection if `diffusion`."""
    params = dict(params, seed=seed)
    params.setdefault("trainer", {})["enable_progress_bar"] = False
    seconds = {}
    start = time.perf_counter()
    prepare.run(dict(params, seed=seed if data_seed is None else data_seed), out_dir=root / PREPARED,
                plots_dir=root / "metrics" / "plots" / "prepare")
    seconds["prepare"] = time.perf_counter() - start
    stages = CLASSIFIERS + DEBIASED
    if diffusion is not None:
        (root / MODELS_DIR).mkdir(parents=True, exist_ok=True)
        (root / MODELS_DIR / "diffusion").symlink_to(diffusion.resolve())
        stages = CLASSIFIERS + INJECTION + DEBIASED
    out = {}
    for name, stage in stages:
        start = time.perf_counter()
        out[name] = stage.run(params, root)
        seconds[name] = time.perf_counter() - start
    row = {"seed": seed, "precision": out["mine"]["precision"], "recall": out["mine"]["recall"]}
    for model in MODELS:
        row[f"{model}_valid_acc"] = out["evaluate"][model]["valid"]["acc"]  # what selects settings
        row[f"{model}_test_acc"] = out["evaluate"][model]["test"]["acc"]
        row[f"{model}_test_conflict_acc"] = out["evaluate"][model]["test"]["conflict_acc"]
        row[f"{model}_best_epoch"] = json.loads((root / "metrics" / f"{model}.json").read_text())["best_epoch"]
    if diffusion is not None:
        row["inject"] = {k: v for k, v in out["inject"].items() if isinstance(v, (int, float))}
        row["inject"]["label_from"] = out["inject"]["label_rule"]["label_from"]
    row["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--diffusion", type=Path, help="a trained models/diffusion/ folder: add invert + inject")
    parser.add_argument("--data-seed", type=int, help="with --diffusion: the split's seed (default: params' seed)")
    args = parser.parse_args(argv)
    pool = POOL if args.diffusion else "null"
    params = apply_overrides(load_params(args.params), [f"debiased.pool={pool}", *args.overrides])
    data_seed = None
    if args.diffusion is not None:
        if not (args.diffusion / "unet" / "config.json").is_file():
            parser.error(f"--diffusion {args.diffusion}: expected a diffusion folder with unet/config.json")
        data_seed = params["seed"] if args.data_seed is None else args.data_seed
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix=f"seeds-{seed}-") as tmp:
            rows.append(run_seed(params, seed, Path(tmp), data_seed, args.diffusion))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    keys = ["precision", "recall"] + [f"{m}_test_acc" for m in MODELS]
    print("| seed | mining precision | mining recall | " + " | ".join(f"{m} test acc" for m in MODELS) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for row in rows:
        print(f"| {row['seed']} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |")
    summary = {k: {"mean": statistics.fmean(r[k] for r in rows),
                   "std": statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0} for k in keys}
    print("| mean ± std | " + " | ".join(f"{summary[k]['mean']:.3f} ± {summary[k]['std']:.3f}" for k in keys) + " |")
    # valid accuracy is the figure to compare settings by (the test split only reports)
    valid = {m: statistics.fmean(r[f"{m}_valid_acc"] for r in rows) for m in MODELS}
    print("valid acc mean: " + ", ".join(f"{m} {v:.3f}" for m, v in valid.items()))
    summary.update({f"{m}_valid_acc": {"mean": v} for m, v in valid.items()})
    print(json.dumps({"overrides": args.overrides, "diffusion": str(args.diffusion) if args.diffusion else None,
                      "data_seed": data_seed, "rows": rows, "summary": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
