"""Does the injection pilot's score rank settings as debiasing does? The proxy's validation.

In a temporary root with the data of params.yaml (plus `--set` overrides, e.g. `--set data.bias=corruption`)
and a trained DDPM (`--diffusion DIR`): prepare, train_biased, mine, lff, invert and train_judge run at
seed `--seed`; `inject` with `injection.auto` runs the pilot; then each measured candidate makes the full
pool with its setting fixed (`injection.auto: false`), debiased_lff trains on it, and evaluate scores it.
The Spearman rank correlation between the pilot score and debiased_lff's valid accuracy (test only
reports) says whether the pilot chooses what debiasing would.

Measured candidates: every one whose label rule the pilot's winner shares, plus the best-scoring
`--other-rule` of the other rule (the rest of that rule score near zero: it is their label that is wrong).

    python benchmarks/pilot_proxy.py --diffusion models/diffusion
    python benchmarks/pilot_proxy.py --diffusion /tmp/ddpm-corruption --set data.bias=corruption
    python benchmarks/pilot_proxy.py --diffusion models/diffusion --quick     # 4 candidates
    python benchmarks/pilot_proxy.py --diffusion models/diffusion --reuse old.json   # re-score a changed pilot

`--reuse FILE` (a previous run's last line, same params and seed) takes the valid/test accuracy of every
candidate measured there instead of training it again: a candidate's pool depends on its setting and the
seed, not on the score, so a change of the score alone needs only the pilot and the new candidates.

Prints a markdown table; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seeds_table import REPO, apply_overrides  # noqa: E402

from diffinject.config import load_params  # noqa: E402
from diffinject.pilot import references  # noqa: E402
from diffinject.stages import (debiased_lff, disent, evaluate, inject, invert, lc, lff, mine, prepare,  # noqa: E402
                               train_biased, train_judge, vanilla)
from diffinject.stages.paths import MODELS  # noqa: E402

# every reference model the pilot can read fidelity from, so each one's score is recorded beside the chosen one's
SETUP = (("train_biased", train_biased), ("mine", mine), ("lff", lff), ("disent", disent), ("lc", lc),
         ("vanilla", vanilla), ("invert", invert), ("train_judge", train_judge))
REFERENCES = references.REFERENCES  # every model the pilot may read fidelity from


def measured(rows: list[dict], winner: int, other_rule: int) -> list[int]:
    """Indices of the candidates to train: the winner's rule all, the other rule's best `other_rule`."""
    rule = rows[winner]["label_from"]
    same = [i for i, row in enumerate(rows) if row["label_from"] == rule]
    other = sorted((i for i, row in enumerate(rows) if row["label_from"] != rule), key=lambda i: -rows[i]["score"])
    return sorted(same + other[:other_rule])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--diffusion", type=Path, required=True, help="a trained models/diffusion/ folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-seed", type=int, help="the split's seed (default: --seed), as seeds_table's --data-seed")
    parser.add_argument("--other-rule", type=int, default=2, help="candidates of the other label rule to train")
    parser.add_argument("--quick", action="store_true", help="train the pilot's top 4 only")
    parser.add_argument("--reuse", type=Path, help="a previous run's JSON: its candidates' accuracies are not re-trained")
    parser.add_argument("--pilot-only", action="store_true", help="run the pilot only (every reference's scores), train nothing")
    args = parser.parse_args(argv)
    params = apply_overrides(load_params(args.params), [*args.overrides, f"seed={args.seed}",
                                                        "trainer.enable_progress_bar=false"])
    params["seed"] = args.seed
    reused = {}
    if args.reuse is not None:
        previous = json.loads(args.reuse.read_text().strip().splitlines()[-1])
        if previous["seed"] != args.seed or previous["overrides"] != args.overrides:
            sys.exit(f"error: {args.reuse}: seed {previous['seed']} / overrides {previous['overrides']}, "
                     f"expected {args.seed} / {args.overrides}")
        reused = {row["name"]: row for row in previous["rows"]}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pilot-proxy-") as tmp:
        root = Path(tmp)
        data_params = params if args.data_seed is None else dict(params, seed=args.data_seed)
        prepare.run(data_params, root)
        (root / MODELS).mkdir(parents=True, exist_ok=True)
        (root / MODELS / "diffusion").symlink_to(args.diffusion.resolve())
        for _, stage in SETUP:
            stage.run(params, root)
        pilot = inject.run(params, root)["pilot"]
        rows = pilot["candidates"]
        if args.pilot_only:
            print(json.dumps({"overrides": args.overrides, "seed": args.seed, "data_seed": args.data_seed, "pilot": pilot}))
            return 0
        winner = next(i for i, row in enumerate(rows) if row["name"] == pilot["winner"])
        chosen = (sorted(range(len(rows)), key=lambda i: -rows[i]["score"])[:4] if args.quick
                  else measured(rows, winner, args.other_rule))
        table = []
        for i in chosen:
            row = rows[i]
            if row["name"] in reused:
                old = reused[row["name"]]
                judge = old["judge_fidelity"]
                result = {"valid": {"acc": old["valid_acc"]}, "test": {"acc": old["test_acc"]}}
            else:
                keys = {k: row[k] for k in ("operator", "site", "t_max", "h_gamma", "label_from")}
                trial = apply_overrides(params, ["injection.auto=false", *(f"injection.{k}={json.dumps(v)}" for k, v in keys.items()),
                                                 "evaluate.models=[debiased_lff]"])
                judge = inject.run(trial, root).get("label_fidelity")
                debiased_lff.run(trial, root)
                result = evaluate.run(trial, root)["debiased_lff"]
            table.append({"name": row["name"], "score": row["score"], "conflict": row["conflict"],
                          **{k: v for k, v in row.items() if k.startswith(("score_", "fidelity_"))},
                          "fidelity": row["fidelity"], "diversity": row["diversity"], "winner": i == winner,
                          "judge_fidelity": judge, "reused": row["name"] in reused,
                          "valid_acc": result["valid"]["acc"], "test_acc": result["test"]["acc"]})
            print(json.dumps(table[-1]), file=sys.stderr, flush=True)
    rho = spearmanr([r["score"] for r in table], [r["valid_acc"] for r in table])
    # the same with each other reference model's fidelity in the score (which reference ranks best)
    by_reference = {pilot["reference"]: round(float(rho.statistic), 4)}
    for name in REFERENCES:
        if f"score_{name}" in table[0]:
            other = spearmanr([r[f"score_{name}"] for r in table], [r["valid_acc"] for r in table])
            by_reference[name] = round(float(other.statistic), 4)
    best_valid = max(table, key=lambda r: r["valid_acc"])
    print("| candidate | pilot score | conflict | fidelity | diversity | debiased_lff valid | test |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(table, key=lambda r: -r["score"]):
        mark = " **(chosen)**" if r["winner"] else ""
        print(f"| {r['name']}{mark} | {r['score']:.3f} | {r['conflict']:.2f} | {r['fidelity']:.2f} | {r['diversity']:.2f} "
              f"| {r['valid_acc']:.3f} | {r['test_acc']:.3f} |")
    chosen_row = next(r for r in table if r["winner"])
    summary = {"overrides": args.overrides, "seed": args.seed, "spearman": round(float(rho.statistic), 4),
               "p_value": round(float(rho.pvalue), 4), "spearman_by_reference": by_reference,
               "conflict_trust": pilot.get("conflict_trust"), "biased_valid_acc": pilot.get("biased_valid_acc"),
               "n_candidates": len(table), "chosen": chosen_row["name"],
               "chosen_valid": chosen_row["valid_acc"], "best_valid": best_valid["valid_acc"],
               "best_valid_candidate": best_valid["name"], "seconds": round(time.perf_counter() - start, 1), "rows": table}
    print(f"Spearman rho by reference model: {by_reference}")
    print(f"Spearman rho {summary['spearman']} (p {summary['p_value']}) over {len(table)} candidates; chosen valid "
          f"{chosen_row['valid_acc']:.3f}, best valid {best_valid['valid_acc']:.3f} ({best_valid['name']})")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
