"""`python -m diffinject STAGE [--params params.yaml]` — one entry point for every DVC stage."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import sys
import time
from pathlib import Path

from diffinject.config import load_params
from diffinject.errors import DiffinjectError
from diffinject.quiet import hide_refused_pickle_warnings, throttle_progress_in_logs

# stage name -> (module under diffinject.stages, one-line help). Each module has `PARAMS` (what it reads)
# and `run(params, root)`, which `main` calls with the parsed params file and the working directory.
STAGES: dict[str, tuple[str, str]] = {
    "prepare": ("prepare", "build data/prepared/ (DisEnt layout + manifest) from data.source"),
    "validate": ("validate", "check data/prepared with great-expectations; fail on a broken dataset"),
    "train_biased": ("train_biased", "train the GCE-biased classifier (biased.*) -> models/biased/"),
    "mine": ("mine", "top mine.k highest-loss train samples per class (or its errors) under the biased model -> data/conflicts.csv"),
    "vanilla": ("vanilla", "baseline: plain cross-entropy classifier (vanilla.*) -> models/vanilla/"),
    "lff": ("lff", "baseline: Learning from Failure (lff.*) -> models/lff/"),
    "disent": ("disent", "baseline: DisEnt, disentangled features + bias-feature swapping (disent.*) -> models/disent/"),
    "lc": ("lc", "baseline: Logit Correction, logits corrected by the estimated group prior (lc.*) -> models/lc/"),
    "train_debiased": ("train_debiased", "train on the train split + a pool sample (debiased.*) -> models/debiased/"),
    "upsample": ("upsample", "control (JTT): the train split + copies of the mined conflicts (upsample.*) -> models/upsample/"),
    "debiased_lff": ("debiased_lff", "LfF on the train split + the synthetic pool (debiased_lff.*) -> models/debiased_lff/"),
    "debiased_disent": ("debiased_disent", "DisEnt on the train split + the synthetic pool (debiased_disent.*) -> models/debiased_disent/"),
    "debiased_lc": ("debiased_lc", "LC on the train split + the synthetic pool (debiased_lc.*) -> models/debiased_lc/"),
    "ae_debias": ("ae_debias", "baseline: an autoencoder in front of the frozen biased classifier (ae.*) -> models/ae_debias/"),
    "prepare_palette": ("prepare_palette", "valid/test images in every palette colour, for group metrics (palette.*) -> data/palette/"),
    "train_diffusion": ("train_diffusion", "train the DDPM on train images, or load diffusion.pretrained -> models/diffusion/"),
    "train_judge": ("train_judge", "colour-blind judge for the synthetic quality report (judge.*) -> models/judge/"),
    "probe": ("probe", "linear probes of what each UNet site carries per timestep (probe.*) -> metrics/probe.json"),
    "invert": ("invert", "DDIM-invert content (mined) and style (easiest) images -> data/inversions/"),
    "fair_finetune": ("fair_finetune", "with injection.generator fair: LoRA-fine-tune the DDPM toward balanced conflicts (fair.*) -> models/fair/"),
    "inject": ("inject", "h-space injection from cached inversions (injection.*) -> data/synthetic/"),
    "evaluate": ("evaluate", "accuracy, group and fairness metrics of every model on valid/test -> metrics/eval.json"),
    "register": ("register", "log this pipeline run to MLflow, register models/debiased; champion moves only on improvement"),
    "promote": ("promote", "move the registry alias champion to VERSION by hand (registry.model_name)"),
    "summary": ("summary", "the end-of-run table: each model's unbiased / conflict / worst-group accuracy, the registry decision, the plots"),
    "search": ("search", "Optuna study of one model's settings on its valid accuracy (--model; search.*)"),
    "preset": ("preset", "print (--run: run) the `dvc exp run -S ...` line that applies presets/NAME.yaml"),
}

# Arguments of single commands besides --params, passed to their module's run() as keyword arguments.
EXTRA_ARGS: dict[str, list[tuple[tuple[str, ...], dict]]] = {
    "promote": [(("version",), {"type": int, "help": "registered model version to make the champion"})],
    "preset": [(("name",), {"help": "a preset of presets/ (e.g. gpu)"}),
               (("--run",), {"dest": "execute", "action": "store_true", "help": "run the dvc exp run line"})],
    "search": [
        (("--model",), {"default": None, "help": "the model whose settings are searched (any models/ folder a stage "
                                                 "trains; default: search.model, else the registry's best candidate)"}),
        (("--n-trials",), {"type": int, "default": None, "help": "trials this process runs (default: search.n_trials)"}),
        (("--storage",), {"default": None, "help": "Optuna storage URL shared by workers (default: search.storage, "
                                                   "else sqlite:///<repo>/mlruns/optuna.db)"}),
    ],
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffinject",
        description="DiffInject pipeline stages (each is also a DVC stage in dvc.yaml).",
    )
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, (_, help_text) in STAGES.items():
        stage = sub.add_parser(name, help=help_text, description=help_text)
        stage.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        for flags, options in EXTRA_ARGS.get(name, []):
            stage.add_argument(*flags, **options)
    return parser


# A file to which every stage appends one JSON line {stage, seconds, peak_rss_mib, exit}: what
# `dvc repro` / `dvc exp run` cost per stage (scripts/stage_costs.py tabulates two such files).
COST_LOG_ENV = "DIFFINJECT_COST_LOG"


def peak_rss_mib() -> float:
    """The largest resident set this process (or a child it waited for, e.g. a DataLoader worker) had,
    in MiB (Linux reports ru_maxrss in KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def _log_cost(stage: str, seconds: float, code: int) -> None:
    path = os.environ.get(COST_LOG_ENV)
    if not path:
        return
    row = {"stage": stage, "seconds": round(seconds, 2), "peak_rss_mib": round(peak_rss_mib(), 1), "exit": code}
    with open(path, "a") as fh:  # one short line per stage: an append is as good as atomic here
        fh.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    throttle_progress_in_logs()
    hide_refused_pickle_warnings()
    module = importlib.import_module(f"diffinject.stages.{STAGES[args.stage][0]}")
    code = 0
    try:
        reads = module.PARAMS.sections or module.PARAMS.seed  # summary reads none: it needs no params file
        params = load_params(args.params) if reads else {}
        module.run(params, Path("."), **{k: v for k, v in vars(args).items() if k not in ("stage", "params")})
    except DiffinjectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    _log_cost(args.stage, time.perf_counter() - start, code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
