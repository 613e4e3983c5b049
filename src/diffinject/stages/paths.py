"""Where the stages read and write, relative to `root` (the repository when run by DVC; a temporary
folder in tests and benchmarks). Constants only, so a stage that needs a path depends on nothing else."""

from __future__ import annotations

from pathlib import Path

PREPARED = Path("data/prepared")
PALETTE = Path("data/palette")  # every-colour valid/test sets (prepare_palette)
CONFLICTS = Path("data/conflicts.csv")  # the mined samples (mine): id, target, loss, rank
INVERSIONS = Path("data/inversions")  # invert's cached DDIM inversions of contents and styles
SYNTHETIC = Path("data/synthetic")  # inject's pool: images/ and manifest.parquet
SYNTHETIC_MANIFEST = SYNTHETIC / "manifest.parquet"  # the default `pool` of debiased.* and debiased_<method>.*
MODELS = Path("models")
DIFFUSION = MODELS / "diffusion"  # the DDPM (train_diffusion)
DIFFUSION_RESUME = MODELS / ".diffusion-resume"  # its checkpoints, outside the DVC output
FAIR = MODELS / "fair"  # fair_finetune's adapter
FAIR_RESUME = MODELS / ".fair-resume"
METRICS = Path("metrics")
PROBE = METRICS / "probe.json"  # probe's curves, read by inject's label rule
EVAL = METRICS / "eval.json"
REGISTER = METRICS / "register.json"
PLOTS = METRICS / "plots"  # one folder per stage: PLOTS / "<stage>"
CURVES = PLOTS / "train"
# Which stage writes models/<name>, for "run this first" messages; baselines first, the order of
# evaluate.models' default.
MODEL_STAGES = {"vanilla": "vanilla", "biased": "train_biased", "lff": "lff", "disent": "disent", "lc": "lc",
                "upsample": "upsample", "ae_debias": "ae_debias", "debiased": "train_debiased",
                "debiased_lff": "debiased_lff", "debiased_disent": "debiased_disent", "debiased_lc": "debiased_lc"}


def model_dir(root: Path, name: str) -> Path:
    return root / MODELS / name


def missing_model_hint(name: str) -> str:
    stage = MODEL_STAGES.get(name)
    return f"run `python -m diffinject {stage}` first" if stage else "train it first"
