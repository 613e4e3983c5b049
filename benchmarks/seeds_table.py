"""The classifier stages on Colored MNIST for several seeds, as one table.

For each seed s, `prepare` writes a fresh data/prepared with seed s (so the split, the colours and
which samples conflict change with the seed) into a temporary root, and prepare_palette, train_biased,
mine, vanilla, lff, disent, lc, upsample, ae_debias, train_debiased, debiased_lff, debiased_disent,
debiased_lc and evaluate run there with
`seed: s` — the stages' own `run()` functions, at the params of params.yaml plus any
`--set section.key=value` overrides. Four variants are trained besides the defaults, each under its own
name: train_debiased with the other `debiased.loss` (debiased_gce or debiased_ce) and debiased_lff,
debiased_disent and debiased_lc with the other `biased_sees` (e.g. debiased_lff_all). Without `--diffusion`
the diffusion stages do not run: no pool, so the DiffInject-based rows are left out.

With `--diffusion DIR` (a trained models/diffusion/ folder, e.g. the pipeline's), `probe`, `invert`,
`train_judge` and `inject` run too with that DDPM (the judge only scores the pool's quality report), and train_debiased mixes in the synthetic pool: the DiffInject row. The DDPM has
seen the train images of the split it was trained on, and another seed's split would put some of them
in valid/test, so in this mode the data stay those of `--data-seed` (default: params.yaml's `seed`, the
pipeline's split) and only the training seeds (models, mining, style draws, injection noise) change.

    python benchmarks/seeds_table.py                                    # seeds 0 1 2, no pool
    python benchmarks/seeds_table.py --diffusion models/diffusion       # + DiffInject
    python benchmarks/seeds_table.py --set lff.epochs=100               # a variant

Prints per-seed rows, then per model: mean ± std unbiased test accuracy, mean valid accuracy (the
figure to compare settings by; the test split only reports), test conflict accuracy and worst-group
accuracy on the every-colour test set (test_palette). `--plot PNG` draws the bar chart of test accuracy
with seed error bars; the summary, the chart and the rows are logged as one MLflow run of the experiment
`seeds` (store: mlruns/ of the repository, or MLFLOW_TRACKING_URI; `--no-mlflow` skips it). The last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from diffinject.config import load_params
from diffinject.stages import (ae_debias, debiased_disent, debiased_lc, debiased_lff, disent, evaluate, inject, invert, lc,
                               lff, mine, prepare, prepare_palette, probe, train_biased, train_debiased, train_judge,
                               upsample, vanilla)
from diffinject.stages.paths import MODELS as MODELS_DIR

REPO = Path(__file__).resolve().parents[1]
CLASSIFIERS = (("prepare_palette", prepare_palette), ("train_biased", train_biased), ("mine", mine),
               ("vanilla", vanilla), ("lff", lff), ("disent", disent), ("lc", lc), ("upsample", upsample),
               ("ae_debias", ae_debias))
INJECTION = (("probe", probe), ("invert", invert), ("train_judge", train_judge), ("inject", inject))
WITH_POOL = (("train_debiased", train_debiased), ("debiased_lff", debiased_lff), ("debiased_disent", debiased_disent),
             ("debiased_lc", debiased_lc))
POOL = "data/synthetic/manifest.parquet"
BASELINES = ("vanilla", "biased", "lff", "disent", "lc", "upsample", "ae_debias")
POOL_MODELS = ("debiased", "debiased_lff", "debiased_disent", "debiased_lc")
EXPERIMENT = "seeds"
# The DiffInject-based rows and how each is trained: (stage, model folder it writes, params key, the
# default value read from params and the other value trained as a variant).
VARIANT_KEYS = {"debiased": (train_debiased, "debiased", "loss", ("ce", "gce")),
                "debiased_lff": (debiased_lff, "debiased_lff", "biased_sees", ("original", "all")),
                "debiased_disent": (debiased_disent, "debiased_disent", "biased_sees", ("original", "all")),
                "debiased_lc": (debiased_lc, "debiased_lc", "biased_sees", ("original", "all"))}


def variants(params: dict) -> dict[str, tuple]:
    """{variant model name: (stage, model folder, {dotted key: value})} of the values params do not set."""
    out = {}
    for model, (stage, folder, key, values) in VARIANT_KEYS.items():
        current = params.get(model, {}).get(key, values[0])
        for value in values:
            if value != current:
                out[f"{model}_{value}"] = (stage, folder, {f"{model}.{key}": value})
    return out


def model_names(params: dict, with_pool: bool, with_variants: bool = True) -> list[str]:
    if not with_pool:
        return list(BASELINES)
    return [*BASELINES, *POOL_MODELS, *(variants(params) if with_variants else ())]


def run_variant(params: dict, root: Path, name: str, stage, folder: str, override: dict) -> dict:
    """Train `stage` with `override` and keep its outputs as models/<name>, metrics/<name>.json; the
    default's models/<folder> stays as it was."""
    moved = [(root / MODELS_DIR / folder, root / MODELS_DIR / name), (root / "metrics" / f"{folder}.json",
                                                                       root / "metrics" / f"{name}.json")]
    for path, _ in moved:
        os.replace(path, path.with_name(f".{path.name}.default"))
    try:
        out = stage.run(apply_overrides(params, [f"{k}={v}" for k, v in override.items()]), root)
        for path, target in moved:
            os.replace(path, target)
    finally:
        for path, _ in moved:
            os.replace(path.with_name(f".{path.name}.default"), path)
    return out


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
             diffusion: Path | None = None, with_variants: bool = True) -> dict:
    """All stages for one seed in `root`; data from `data_seed` (None: `seed`), injection if `diffusion`."""
    params = dict(params, seed=seed)
    params.setdefault("trainer", {})["enable_progress_bar"] = False
    seconds = {}
    start = time.perf_counter()
    prepare.run(dict(params, seed=seed if data_seed is None else data_seed), root)
    seconds["prepare"] = time.perf_counter() - start
    stages = CLASSIFIERS
    if diffusion is not None:
        (root / MODELS_DIR).mkdir(parents=True, exist_ok=True)
        (root / MODELS_DIR / "diffusion").symlink_to(diffusion.resolve())
        stages = CLASSIFIERS + INJECTION + WITH_POOL
    out = {}
    for name, stage in stages:
        start = time.perf_counter()
        out[name] = stage.run(params, root)
        seconds[name] = time.perf_counter() - start
    if diffusion is not None and with_variants:
        for name, (stage, folder, override) in variants(params).items():
            start = time.perf_counter()
            out[name] = run_variant(params, root, name, stage, folder, override)
            seconds[name] = time.perf_counter() - start
    models = model_names(params, diffusion is not None, with_variants)
    start = time.perf_counter()
    out["evaluate"] = evaluate.run(apply_overrides(params, [f"evaluate.models={json.dumps(models)}"]), root)
    seconds["evaluate"] = time.perf_counter() - start
    row = {"seed": seed, "precision": out["mine"]["precision"], "recall": out["mine"]["recall"]}
    for model in models:
        result = out["evaluate"][model]
        row[f"{model}_valid_acc"] = result["valid"]["acc"]  # what selects settings
        row[f"{model}_test_acc"] = result["test"]["acc"]
        row[f"{model}_test_conflict_acc"] = result["test"]["conflict_acc"]
        if "test_palette" in result:
            row[f"{model}_test_palette_worst_group_acc"] = result["test_palette"]["worst_group_acc"]
        row[f"{model}_best_epoch"] = json.loads((root / "metrics" / f"{model}.json").read_text())["best_epoch"]
    if diffusion is not None:
        row["inject"] = {k: v for k, v in out["inject"].items() if isinstance(v, (int, float))}
        row["inject"]["label_from"] = out["inject"]["label_rule"]["label_from"]
        if "pilot" in out["inject"]:  # injection.auto: the setting the pilot chose and its score
            pilot = out["inject"]["pilot"]
            row["inject"]["pilot_winner"] = pilot["winner"]
            row["inject"]["pilot_score"] = max(c["score"] for c in pilot["candidates"])
            row["inject"]["conflict_trust"] = pilot.get("conflict_trust")
    row["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--diffusion", type=Path, help="a trained models/diffusion/ folder: add invert + inject")
    parser.add_argument("--data-seed", type=int, help="with --diffusion: the split's seed (default: params' seed)")
    parser.add_argument("--plot", type=Path, help="write the bar chart of test accuracy per model here (PNG)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")
    parser.add_argument("--no-variants", action="store_true", help="train only the default of each DiffInject-based row")
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
            rows.append(run_seed(params, seed, Path(tmp), data_seed, args.diffusion, not args.no_variants))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    models = model_names(params, args.diffusion is not None, not args.no_variants)
    summary = summarise(rows, models)
    print_tables(rows, models, summary)
    result = {"overrides": args.overrides, "diffusion": str(args.diffusion) if args.diffusion else None,
              "data_seed": data_seed, "seeds": args.seeds, "rows": rows, "summary": summary}
    if args.plot is not None:
        efficacy_chart(summary, models, args.plot, len(rows))
    if not args.no_mlflow:
        result["mlflow_run_id"] = log_to_mlflow(result, args.plot)
    print(json.dumps(result))
    return 0


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(rows: list[dict], models: list[str]) -> dict[str, dict[str, float]]:
    """{"<model>_<figure>": {mean, std}} over the seeds, for every figure a row has."""
    keys = ["precision", "recall"] + [k for k in rows[0] if any(k.startswith(f"{m}_") for m in models)
                                      and not k.endswith("best_epoch")]
    return {k: mean_std([r[k] for r in rows]) for k in keys if all(k in r for r in rows)}


def print_tables(rows: list[dict], models: list[str], summary: dict) -> None:
    print("| seed | mining precision | mining recall | " + " | ".join(f"{m} test acc" for m in models) + " |")
    print("|---" * (len(models) + 3) + "|")
    for row in rows:
        print(f"| {row['seed']} | {row['precision']:.3f} | {row['recall']:.3f} | "
              + " | ".join(f"{row[f'{m}_test_acc']:.3f}" for m in models) + " |")
    print()
    print("| model | unbiased test acc (mean ± std) | valid acc (mean) | test conflict acc | worst group (test_palette) |")
    print("|---|---|---|---|---|")

    def cell(key: str, std: bool = False) -> str:
        if key not in summary:
            return "-"
        value = summary[key]
        return f"{value['mean']:.3f} ± {value['std']:.3f}" if std else f"{value['mean']:.3f}"

    for m in models:
        print(f"| {m} | {cell(f'{m}_test_acc', True)} | {cell(f'{m}_valid_acc')} | {cell(f'{m}_test_conflict_acc')} "
              f"| {cell(f'{m}_test_palette_worst_group_acc')} |")


def efficacy_chart(summary: dict, models: list[str], path: Path, n_seeds: int) -> None:
    """Bar chart of mean unbiased test accuracy per model, error bars one std over the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = [summary[f"{m}_test_acc"]["mean"] for m in models]
    stds = [summary[f"{m}_test_acc"]["std"] for m in models]
    colours = ["#c44e52" if m.startswith("debiased") else "#8c8c8c" for m in models]
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(models), 3.6))
    bars = ax.bar(models, means, yerr=stds, capsize=4, color=colours)
    for bar, mean, std in zip(bars, means, stds):  # above the error bar
        ax.text(bar.get_x() + bar.get_width() / 2, mean + std + 0.02, f"{mean:.3f}", ha="center", fontsize=8)
    ax.set_ylabel("unbiased test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"Colored MNIST, mean ± std over {n_seeds} seeds (red: DiffInject-based)", fontsize=9)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def log_to_mlflow(result: dict, plot: Path | None) -> str:
    """One run of the `seeds` experiment: the overrides and seeds as params, every mean/std as a metric,
    the JSON and the chart as artifacts."""
    import mlflow

    from diffinject.tracking import runs

    experiment_id = runs.setup_experiment(EXPERIMENT, REPO)
    with mlflow.start_run(experiment_id=experiment_id, run_name="seeds-table") as run:
        mlflow.log_params({"seeds": " ".join(map(str, result["seeds"])), "diffusion": str(result["diffusion"]),
                           "overrides": " ".join(result["overrides"]) or "none"})
        mlflow.log_metrics({f"{k}.{stat}": v for k, value in result["summary"].items() for stat, v in value.items()})
        mlflow.log_dict(result, "seeds_table.json")
        if plot is not None:
            mlflow.log_artifact(str(plot))
        return run.info.run_id


if __name__ == "__main__":
    raise SystemExit(main())
