"""Is the generator the bottleneck? Reconstruction and pool quality per DDPM, side by side, on one dataset.

When the injection pilot's fidelity is low for every setting (docs/injection_pilot.md), a larger DDPM
or more training steps may be the lever, or it may not: this measures what each trained DDPM buys.
In a temporary root with the data of params.yaml (plus `--set` overrides), prepare, prepare_palette,
train_biased, mine, vanilla, lff and train_judge run once at `--seed`; then for each `--diffusion DIR`
(DDPMs trained on the same data: the default and a wider one, say):

- **reconstruction**: `--n-images` valid images DDIM-inverted and generated back with the injection's
  step counts and no injection; the label judge's and the LfF reference's accuracy on them, against the
  same images unchanged. What the generator alone loses of the label.
- **pool**: probe, invert and inject with params' injection (the pilot choosing per DDPM under
  `injection.auto`): the pilot's winner and its score terms, the pool's label fidelity and faithful
  bias conflicts by the evaluation-only judges, its Fréchet distance, and inject's seconds.

A generator that reconstructs the label but whose pools do not points at the injection, not the
generator. Ratios are against the first `--diffusion`. The judges are evaluation only, as in inject.

    python benchmarks/generator_compare.py --diffusion models/diffusion /tmp/ddpm-wide/models/diffusion
    python benchmarks/generator_compare.py --diffusion A B --set data.source=idx --set data.path=/usr/share/datasets/fashion-mnist

Prints a markdown table; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seeds_table import REPO, apply_overrides  # noqa: E402

from diffinject.config import load_params  # noqa: E402
from diffinject.data.manifest import read_manifest  # noqa: E402
from diffinject.data.tensors import load_split  # noqa: E402
from diffinject.diffusion.model import load_diffusion  # noqa: E402
from diffinject.diffusion.precision import autocast, resolve_precision  # noqa: E402
from diffinject.diffusion.quality import reconstruct  # noqa: E402
from diffinject.diffusion.synthetic_quality import to_grey  # noqa: E402
from diffinject.models.checkpoint import load_classifier  # noqa: E402
from diffinject.stages import (inject, invert, lff, mine, prepare, prepare_palette, probe, train_biased,  # noqa: E402
                               train_judge, vanilla)
from diffinject.models.classifier import predictor  # noqa: E402
from diffinject.stages.paths import MODELS, PREPARED, model_dir  # noqa: E402

SETUP = (prepare_palette, train_biased, mine, vanilla, lff, train_judge)
PER_GENERATOR = (probe, invert)
POOL_KEYS = ("label_fidelity", "faithful_bias_conflict_fraction", "bias_conflict_fraction", "frechet_distance", "n_samples")
# figures where higher is better, compared against the first generator
RATIO_KEYS = ("recon_judge_acc", "recon_reference_acc", "pilot_score", "label_fidelity", "faithful_bias_conflict_fraction")


@dataclass
class ValidSample:
    """The valid images every generator reconstructs, and the two readers of their label."""
    images: torch.Tensor  # uint8
    targets: np.ndarray
    judge: Callable[[torch.Tensor], np.ndarray]  # sees the grey view when it was trained on it
    reference: Callable[[torch.Tensor], np.ndarray]

    def accuracies(self, images: torch.Tensor) -> tuple[float, float]:
        return (float((self.judge(images) == self.targets).mean()), float((self.reference(images) == self.targets).mean()))


def valid_sample(root: Path, seed: int, n_images: int) -> ValidSample:
    """`n_images` valid images (seeded) with the judge and LfF as inject's quality report and pilot read them."""
    prepared = root / PREPARED
    manifest = read_manifest(prepared)
    valid = load_split(prepared, "valid", manifest)
    pick = torch.randperm(len(valid), generator=torch.Generator().manual_seed(seed))[:n_images]
    images = valid.images[pick]
    shape, n_classes, cpu = tuple(images.shape[1:]), int(manifest["target"].nunique()), torch.device("cpu")
    judge, _, meta = load_classifier(model_dir(root, "judge"), num_classes=n_classes, image_shape=shape)
    reference, _, _ = load_classifier(model_dir(root, "lff"), num_classes=n_classes, image_shape=shape)
    read_judge = predictor(judge, cpu)
    grey = meta.get("view", "grey") == "grey"
    return ValidSample(images, valid.targets[pick].numpy(), (lambda x: read_judge(to_grey(x))) if grey else read_judge,
                       predictor(reference, cpu))


def reconstruction_fidelity(sample: ValidSample, unet, scheduler, params: dict) -> dict[str, float]:
    """The judge's and LfF's accuracy on DDIM reconstructions (the injection's step counts, no injection)."""
    precision = resolve_precision(params["diffusion"]["precision"], torch.device("cpu"))
    steps = params["injection"]
    with torch.no_grad(), autocast(precision, torch.device("cpu")):
        rec = reconstruct(unet.eval(), scheduler, sample.images, steps["n_inv_step"], steps["n_gen_step"])
    judge_acc, reference_acc = sample.accuracies(rec.images)
    return {"recon_mse": round(rec.mse, 4), "recon_judge_acc": judge_acc, "recon_reference_acc": reference_acc}


def pool_quality(base: Path, diffusion: Path, params: dict, work: Path) -> dict:
    """probe, invert and inject on a copy of the base root with this DDPM; the pool's report and the pilot's winner."""
    shutil.copytree(base, work, symlinks=True)
    (work / MODELS / "diffusion").symlink_to(diffusion.resolve())
    for stage in PER_GENERATOR:
        stage.run(params, work)
    start = time.perf_counter()
    report = inject.run(params, work)
    row = {k: report.get(k) for k in POOL_KEYS}
    row["inject_seconds"] = round(time.perf_counter() - start, 1)
    pilot = report.get("pilot")
    if pilot:
        winner = next(c for c in pilot["candidates"] if c["name"] == pilot["winner"])
        row.update(pilot_winner=pilot["winner"], pilot_score=winner["score"], pilot_fidelity=winner["fidelity"],
                   pilot_conflict=winner["conflict"], pilot_diversity=winner["diversity"],
                   pilot_best_fidelity=max(c["fidelity"] for c in pilot["candidates"]))
    return row


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each row's RATIO_KEYS divided by the first row's (None where either is missing or the first is 0)."""
    first = rows[0]
    for row in rows:
        row["ratio_to_first"] = {k: (round(row[k] / first[k], 3) if row.get(k) is not None and first.get(k) else None)
                                 for k in RATIO_KEYS}
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--diffusion", type=Path, nargs="+", required=True, help="trained models/diffusion/ folders")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-images", type=int, default=512, help="valid images reconstructed per generator")
    parser.add_argument("--quick", action="store_true", help="reconstruction only (no pool): minutes, not tens")
    args = parser.parse_args(argv)
    for folder in args.diffusion:
        if not (folder / "unet" / "config.json").is_file():
            parser.error(f"--diffusion {folder}: expected a diffusion folder with unet/config.json")
    params = apply_overrides(load_params(args.params), [*args.overrides, f"seed={args.seed}", "trainer.enable_progress_bar=false"])
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="generator-compare-") as tmp:
        base = Path(tmp) / "base"
        prepare.run(params, base)
        for stage in SETUP:
            stage.run(params, base)
        sample = valid_sample(base, args.seed, args.n_images)
        real_judge_acc, real_reference_acc = sample.accuracies(sample.images)
        for i, folder in enumerate(args.diffusion):
            unet, scheduler = load_diffusion(folder)
            row = {"diffusion": str(folder), "parameters": sum(w.numel() for w in unet.parameters()),
                   "real_judge_acc": real_judge_acc, "real_reference_acc": real_reference_acc,
                   **reconstruction_fidelity(sample, unet, scheduler, params)}
            if not args.quick:
                row.update(pool_quality(base, folder, params, Path(tmp) / f"generator-{i}"))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    rows = with_ratios(rows)
    print("| generator | parameters | recon MSE | judge on recon (real) | LfF on recon (real) | pilot score | pool label fidelity "
          "| faithful conflicts | Fréchet | inject s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        def fmt(key: str, spec: str = ".3f") -> str:
            return "–" if r.get(key) is None else format(r[key], spec)
        print(f"| {r['diffusion']} | {r['parameters']:,} | {r['recon_mse']:.4f} | {r['recon_judge_acc']:.3f} ({r['real_judge_acc']:.3f}) "
              f"| {r['recon_reference_acc']:.3f} ({r['real_reference_acc']:.3f}) | {fmt('pilot_score')} | {fmt('label_fidelity')} "
              f"| {fmt('faithful_bias_conflict_fraction')} | {fmt('frechet_distance', '.1f')} | {fmt('inject_seconds', '.0f')} |")
    print(json.dumps({"overrides": args.overrides, "seed": args.seed, "quick": args.quick,
                      "seconds": round(time.perf_counter() - start, 1), "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
