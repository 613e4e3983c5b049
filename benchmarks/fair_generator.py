"""The fair generator against the base one, per seed, side by side in one run (issue: a fair generator).

For each seed, in one temporary folder: the stages of seeds_table.py with the given DDPM (no variants:
the base pool and its DiffInject rows), then `fair_finetune` (injection.generator fair), `inject` with
the fair adapter, and train_debiased / debiased_lff again on the fair pool (kept as debiased_fair and
debiased_lff_fair). Both pools are described by the evaluation-only judges: bias deviation from the
target (uniform over the label's conflicting values), bias conflict fraction, label fidelity, faithful
conflicts; the models by valid (what would choose the default) and test accuracy.

    python benchmarks/fair_generator.py --diffusion models/diffusion                      # seeds 0 1 2
    python benchmarks/fair_generator.py --diffusion DDPM --set data.bias=background --seeds 0
    python benchmarks/fair_generator.py --diffusion models/diffusion --quick              # 1 seed, 10 steps

Prints one row per seed, the means, and the ratios fair / base; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from seeds_table import POOL, apply_overrides, run_seed, run_variant  # noqa: E402

from diffinject.config import load_params  # noqa: E402
from diffinject.stages import debiased_lff, evaluate, fair_finetune, inject, train_debiased  # noqa: E402

POOL_KEYS = ("bias_deviation", "bias_conflict_fraction", "label_fidelity", "faithful_bias_conflict_fraction")
RETRAINED = (("debiased", train_debiased), ("debiased_lff", debiased_lff))


def run_fair(params: dict, root: Path) -> dict:
    """In a folder after run_seed: the fair adapter, its pool, the pool models retrained on it."""
    fair = apply_overrides(params, ["injection.generator=fair"])
    out = {"fair_finetune": fair_finetune.run(fair, root), "inject": inject.run(fair, root)}
    for model, stage in RETRAINED:
        run_variant(fair, root, f"{model}_fair", stage, model, {})
    models = [name for model, _ in RETRAINED for name in (model, f"{model}_fair")]
    out["evaluate"] = evaluate.run(apply_overrides(params, [f"evaluate.models={json.dumps(models)}"]), root)
    return out


def seed_row(seed: int, base: dict, fair: dict) -> dict:
    row = {"seed": seed, "fair_seconds": fair["fair_finetune"]["seconds"],
           "fair_seconds_per_step": fair["fair_finetune"]["seconds_per_step"],
           "setting": fair["fair_finetune"].get("pilot_winner")}
    for key in POOL_KEYS:
        row[f"base_{key}"] = base["inject"].get(key)
        row[f"fair_{key}"] = fair["inject"].get(key)
    for model, _ in RETRAINED:
        for pool, name in (("base", model), ("fair", f"{model}_fair")):
            result = fair["evaluate"][name]
            row[f"{pool}_{model}_valid_acc"] = result["valid"]["acc"]
            row[f"{pool}_{model}_test_acc"] = result["test"]["acc"]
    return row


def summarise(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if k.startswith(("base_", "fair_")) and all(isinstance(r.get(k), (int, float)) for r in rows)]
    summary = {}
    for key in keys:
        values = [r[key] for r in rows]
        summary[key] = {"mean": round(statistics.mean(values), 4),
                        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}
    ratios = {}
    for key in keys:
        if key.startswith("fair_") and f"base_{key[5:]}" in summary and summary[f"base_{key[5:]}"]["mean"]:
            ratios[key[5:]] = round(summary[key]["mean"] / summary[f"base_{key[5:]}"]["mean"], 3)
    return {"means": summary, "fair_over_base": ratios}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--diffusion", type=Path, required=True, help="a trained models/diffusion/ folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--quick", action="store_true", help="seed 0, 10 fine-tuning steps, short classifiers (smoke run)")
    args = parser.parse_args(argv)
    if not (args.diffusion / "unet" / "config.json").is_file():
        parser.error(f"--diffusion {args.diffusion}: expected a diffusion folder with unet/config.json")
    overrides = [f"debiased.pool={POOL}", *args.overrides]
    if args.quick:
        args.seeds = [0]
        overrides += ["fair.steps=10", "fair.eval_size=64", "ae.pretrain_epochs=1", "ae.rec_epochs=1"] + [f"{s}.epochs=2" for s in (
            "biased", "vanilla", "lff", "disent", "lc", "upsample", "ae", "debiased", "debiased_lff", "debiased_disent",
            "debiased_lc", "judge")]
    params = apply_overrides(load_params(args.params), overrides)
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix=f"fair-{seed}-") as tmp:
            base = run_seed(params, seed, Path(tmp), params["seed"], args.diffusion, with_variants=False)
            fair = run_fair(dict(params, seed=seed), Path(tmp))
        rows.append(seed_row(seed, base, fair))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    summary = summarise(rows)
    print(f"{'':34s} {'base':>16s} {'fair':>16s}")
    for key in [k[5:] for k in summary["means"] if k.startswith("base_")]:
        b, f = summary["means"][f"base_{key}"], summary["means"].get(f"fair_{key}")
        if f is not None:
            print(f"{key:34s} {b['mean']:.4f} ± {b['std']:.4f} {f['mean']:.4f} ± {f['std']:.4f}")
    print(json.dumps({"overrides": args.overrides, "diffusion": str(args.diffusion), "seeds": args.seeds, "rows": rows, **summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
