"""Injection settings side by side on one trained pipeline: operator × site × schedule × label rule ->
the pool's quality report and, with --train, the debiased classifier's valid / test accuracy.

Each setting runs `inject` (and with --train `train_debiased` + `evaluate`) in its own temporary root
whose inputs are links to the repository's data/prepared, data/inversions, models/ and metrics/probe.json
(run `dvc repro inject` first), so the pipeline's own outputs are never touched.

    python scripts/injection_sweep.py --train                      # the built-in grid
    python scripts/injection_sweep.py --setting operator=channel_stats,site=up0+up1,h_gamma=0.7
    python scripts/injection_sweep.py --train --setting t_max=400,debiased.bias_conflict_ratio=0.2

Prints a markdown table and, last, one JSON object with every row.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

from diffinject.config import load_params
from diffinject.stages import evaluate, inject, train_debiased

REPO = Path(__file__).resolve().parents[1]
LINKED = ("data/prepared", "data/inversions", "models/diffusion", "models/judge", "models/vanilla",
          "models/biased", "metrics/probe.json")
GRID = [
    "operator=slerp,site=h,label_from=content",
    "operator=slerp,site=h,label_from=style",
    "operator=slerp,site=h,label_from=content,schedule=official,n_gen_step=50",
    "operator=channel_stats,site=h,label_from=auto",
    "operator=slerp,site=up0+up1,label_from=auto",
    "operator=channel_stats,site=up0+up1,label_from=auto",
    "operator=channel_stats,site=up0+up1,label_from=auto,schedule=official,n_gen_step=50",
    "operator=channel_stats,site=up0+up1+up2,label_from=auto",
]
COLUMNS = ("faithful_conflict_fraction", "label_fidelity", "colour_conflict_fraction", "colour_from_style_fraction")


def parse_setting(text: str) -> dict:
    """"operator=channel_stats,site=up0+up1,debiased.bias_conflict_ratio=0.2" -> {key: value}; a key
    without a section is injection's."""
    out = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        out[key.strip()] = value.split("+") if key.strip() == "site" else yaml.safe_load(value)
    return out


def apply_setting(params: dict, setting: dict) -> None:
    for key, value in setting.items():
        section, _, leaf = key.rpartition(".")
        params.setdefault(section or "injection", {})[leaf] = value


def link_inputs(root: Path, repo: Path) -> None:
    for rel in LINKED:
        src = repo / rel
        if not src.exists():
            raise SystemExit(f"{src}: missing (run `dvc repro inject` first)")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(src.resolve(), target_is_directory=src.is_dir())


def run_setting(params: dict, setting: dict, repo: Path, train: bool) -> dict:
    params = copy.deepcopy(params)
    # no pilot: the setting as given, the keys it leaves auto at the hand-chosen values, label_from auto from the probes
    params.setdefault("injection", {})["auto"] = False
    apply_setting(params, setting)
    params.setdefault("trainer", {})["enable_progress_bar"] = False
    params["evaluate"] = dict(params.get("evaluate", {}), models=["debiased"])
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
        root = Path(tmp)
        link_inputs(root, repo)
        start = time.perf_counter()
        report = inject.run(params, root)
        row = {"setting": setting, **{k: report.get(k) for k in COLUMNS},
               "label_from": report["label_rule"]["label_from"], "injected_steps": report["injected_steps"],
               "inject_seconds": round(time.perf_counter() - start, 1)}
        if train:
            train_debiased.run(params, root)
            scores = evaluate.run(params, root)["debiased"]
            row.update(valid_acc=scores["valid"]["acc"], test_acc=scores["test"]["acc"])
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO)
    parser.add_argument("--setting", action="append", help="key=value,... of injection.* (site=a+b); default: the grid")
    parser.add_argument("--train", action="store_true", help="also train_debiased + evaluate (valid/test accuracy)")
    args = parser.parse_args(argv)
    params = load_params(args.repo / "params.yaml")
    rows = []
    for text in args.setting or GRID:
        rows.append(run_setting(params, parse_setting(text), args.repo, args.train))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    extra = ("valid_acc", "test_acc") if args.train else ()
    print("| setting | label | faithful conflicts | label fidelity | colour conflicts | colour from style | " +
          " | ".join(extra) + " |")
    for row in rows:
        cells = [", ".join(f"{k}={'+'.join(v) if isinstance(v, list) else v}" for k, v in row["setting"].items()), row["label_from"]]
        cells += [f"{row[k]:.3f}" if row[k] is not None else "—" for k in COLUMNS + extra]
        print("| " + " | ".join(cells) + " |")
    print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
