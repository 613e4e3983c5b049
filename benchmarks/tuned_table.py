"""Every row of the efficacy table tuned with the same budget, then retrained on several seeds.

1. Tuning: one pipeline root at the params' seed (prepare, train_biased, mine, and with `--diffusion`
   lff, probe, invert, train_judge and inject, so the DiffInject rows' searches have the pilot's report
   and the inversions). For each model, `python -m diffinject search --model M` with `--trials` trials
   (the same number for every row; trial 0 is the model's default setting), on its valid accuracy.
2. Retraining: for each seed, a root with the same data split (the params' seed: tuning and reporting
   see one valid/test split) and that seed's biased model, mining and injection; each row trains twice
   in its own folder, at the default params and at its tuned ones, and is evaluated on valid and test.
3. The table: per row, valid and test mean ± std over the seeds, default beside tuned (the search's
   best, or the default when it did better on the tuning root's valid: a ratio list is no trial), the trials and
   the seconds each row consumed (tuning + retraining), and the best tuned DiffInject-based row against
   the best tuned non-generative row on test.

    python benchmarks/tuned_table.py --diffusion models/diffusion          # every row, 8 trials, seeds 0 1 2
    python benchmarks/tuned_table.py --models lff lc --trials 20           # some baselines only
    python benchmarks/tuned_table.py --quick                                # 2 baselines, 2 trials, 2 epochs

`--quick` also retrains the first row's first seed twice and reports whether the numbers reproduce.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diffinject.config import load_params  # noqa: E402
from diffinject.stages import evaluate, inject, invert, lff, mine, prepare, probe, train_biased, train_judge  # noqa: E402
from diffinject.stages import search as search_stage  # noqa: E402
from diffinject.tracking.registry_config import NON_GENERATIVE, generator_based  # noqa: E402
from diffinject.tracking.search import overlay  # noqa: E402
from diffinject.tracking.search.objective import link_inputs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASELINES = list(NON_GENERATIVE)
GENERATOR_ROWS = list(search_stage.POOL_STAGES)
DEFAULT_TRIALS = 8  # per row; a baseline trial costs 10-60 s on 4,000 images, a DiffInject one 1-2 min (2 cores)
QUICK_MODELS = ["vanilla", "lc"]


def pipeline_root(params: dict, root: Path, seed: int, diffusion: Path | None) -> None:
    """What the rows read: data at the params' seed; the biased model, mining and the pool at `seed`."""
    prepare.run(params, root)  # the split stays the params' seed's
    seeded = dict(params, seed=seed)
    stages = [train_biased, mine]
    if diffusion is not None:
        (root / "models").mkdir(parents=True, exist_ok=True)
        (root / "models" / "diffusion").symlink_to(diffusion.resolve())
        stages += [lff, probe, invert, train_judge, inject]  # lff: the pilot's reference
    for stage in stages:
        stage.run(seeded, root)


def tune(params: dict, root: Path, model: str, trials: int) -> dict:
    """The model's search in `root`: best params (dotted), trials, seconds."""
    study = dict(params.get("search") or {}, study_name=f"tuned-{model}", n_trials=trials, keep_trial_dirs=False,
                 storage=f"sqlite:///{root / 'optuna.db'}", model=model)
    start = time.perf_counter()
    summary = search_stage.run(dict(params, search=study), root)
    best = dict(summary["best_params"])
    if any(k.startswith("injection.") for k in best):
        best["injection.auto"] = False  # a tuned injection setting is used as found, not re-chosen
    return {"best_params": best, "best_valid": summary["best_value"], "trials": trials,
            "seconds": round(time.perf_counter() - start, 1)}


def retrain(params: dict, seed_root: Path, folder: Path, model: str, seed: int) -> dict:
    """The row trained in `folder` (inputs linked from `seed_root`), evaluated on valid and test."""
    params = overlay(params, {"search.model": model})
    setup, _ = search_stage.setup_for(params, seed_root)
    folder.mkdir(parents=True)
    link_inputs(seed_root, folder, setup)
    run = overlay(dict(params, seed=seed), {**setup.fixed, "evaluate.splits": ["valid", "test"]})
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        if model in search_stage.POOL_STAGES:
            inject.run(run, folder)
        search_stage.STAGES[model].run(run, folder)
        result = evaluate.run(run, folder)[model]
    return {"valid": result["valid"]["acc"], "test": result["test"]["acc"], "seconds": time.perf_counter() - start}


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(models: list[str], tuning: dict, rows: list[dict], tuning_seed: int) -> dict:
    """Per row: default and tuned, valid and test over the seeds. "tuned" is the search's best unless the
    default did better on the tuning root's valid (a default the search cannot sample as trial 0, such as
    a ratio list that each stage chooses from): selection on valid, among the trials and the default."""
    table = {}
    for model in models:
        entry = {"trials": tuning[model]["trials"], "tuned_params": tuning[model]["best_params"],
                 "search_best_valid": tuning[model]["best_valid"],
                 "seconds": round(tuning[model]["seconds"] + sum(r["seconds"] for r in rows if r["model"] == model), 1)}
        default_at_tuning = [r["valid"] for r in rows if (r["model"], r["variant"], r["seed"]) == (model, "default", tuning_seed)]
        entry["tuned_is_default"] = bool(default_at_tuning) and default_at_tuning[0] > tuning[model]["best_valid"]
        for variant in ("default", "tuned"):
            source = "default" if variant == "tuned" and entry["tuned_is_default"] else variant
            mine_rows = [r for r in rows if r["model"] == model and r["variant"] == source]
            for split in ("valid", "test"):
                entry[f"{variant}_{split}"] = mean_std([r[split] for r in mine_rows])
        table[model] = entry
    return table


def verdict(table: dict) -> dict | None:
    """The best tuned DiffInject-based row against the best tuned non-generative row, on test (points)."""
    gen = [m for m in table if generator_based(m)]
    base = [m for m in table if not generator_based(m)]
    if not gen or not base:
        return None
    g = max(gen, key=lambda m: table[m]["tuned_test"]["mean"])
    b = max(base, key=lambda m: table[m]["tuned_test"]["mean"])
    margin = 100 * (table[g]["tuned_test"]["mean"] - table[b]["tuned_test"]["mean"])
    return {"best_generator_row": g, "best_non_generative_row": b, "margin_points": round(margin, 2),
            "meets_3_points": margin >= 3.0}


def print_table(table: dict, n_seeds: int) -> None:
    cell = lambda s: f"{s['mean']:.3f} ± {s['std']:.3f}"  # noqa: E731
    print(f"| row | trials | default valid | tuned valid | default test | tuned test | seconds |  ({n_seeds} seeds)")
    print("|---|---|---|---|---|---|---|")
    for model, e in table.items():
        print(f"| {model} | {e['trials']}{' (default kept)' if e['tuned_is_default'] else ''} | "
              f"{cell(e['default_valid'])} | {cell(e['tuned_valid'])} | "
              f"{cell(e['default_test'])} | {cell(e['tuned_test'])} | {e['seconds']:.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--models", nargs="+", help="rows to tune (default: every baseline, and the DiffInject rows with --diffusion)")
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help="search trials per row (the same for every row)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--diffusion", type=Path, help="a trained models/diffusion/ folder: the DiffInject rows too")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--quick", action="store_true", help="vanilla and lc, 2 trials, 2 epochs, seeds 0 1")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    params.setdefault("trainer", {})["enable_progress_bar"] = False
    if args.quick:
        args.models, args.trials, args.seeds = args.models or QUICK_MODELS, 2, [0, 1]
        args.overrides += [f"{search_stage.section_of(m)}.epochs=2" for m in args.models]
    models = args.models or BASELINES + (GENERATOR_ROWS if args.diffusion else [])
    if any(m in GENERATOR_ROWS for m in models) and args.diffusion is None:
        parser.error("the DiffInject rows need --diffusion (a trained models/diffusion/ folder)")
    params = overlay(params, {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.overrides)})
    params["search"] = dict(params.get("search") or {}, pruner="none")  # every trial runs to its end: one budget
    with tempfile.TemporaryDirectory(prefix="tuned-") as tmp:
        tmp = Path(tmp)
        os.environ["DVC_ROOT"] = str(tmp)  # the searches' MLflow store stays in the temporary folder
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        tuning_root = tmp / "tuning"
        with contextlib.redirect_stdout(sys.stderr):
            pipeline_root(params, tuning_root, params.get("seed", 0), args.diffusion)
            tuning = {m: tune(params, tuning_root, m, args.trials) for m in models}
        rows = []
        for seed in args.seeds:
            seed_root = tmp / f"seed-{seed}"
            with contextlib.redirect_stdout(sys.stderr):
                pipeline_root(params, seed_root, seed, args.diffusion)
            for model in models:
                for variant, values in (("default", {}), ("tuned", tuning[model]["best_params"])):
                    out = retrain(overlay(params, values), seed_root, seed_root / "rows" / f"{model}-{variant}", model, seed)
                    rows.append({"model": model, "variant": variant, "seed": seed, **out})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        reproduced = None
        if args.quick:
            again = retrain(params, tmp / f"seed-{args.seeds[0]}", tmp / "again", models[0], args.seeds[0])
            first = next(r for r in rows if r["model"] == models[0] and r["variant"] == "default")
            reproduced = (again["valid"], again["test"]) == (first["valid"], first["test"])
    table = summarise(models, tuning, rows, params.get("seed", 0))
    print_table(table, len(args.seeds))
    result = {"trials_per_row": args.trials, "seeds": args.seeds, "table": table, "verdict": verdict(table),
              "rows": rows, "reproduced": reproduced}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
