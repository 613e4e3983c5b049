"""How recognisable are the DDPM's samples from noise? A number for what the sample grid shows.

Draws N images from noise exactly as `train_diffusion` draws its grid (ancestral DDPM on
`diffusion.sample_steps`, in `diffusion.precision`) and shows them, in grey, to the colour-blind judge
of `train_judge` (an evaluation-only classifier of grey-scale digits). A sample counts as a recognisable
digit when the judge gives one class probability >= 0.9; the same is measured on N real test images of
the prepared set, the ceiling for this judge. Also reported: how many classes the recognisable samples
cover. (Colour is no test here: the failed samples are blobs of the palette's orange.)

Also the ink: the share of an image's pixels that are foreground (brightest channel above
FOREGROUND), for samples and real test images, and the share of samples with more ink than
HEAVY_QUANTILE of the real ones, a count of the blobs that needs no judge.

    python scripts/diffusion_sample_quality.py [--repo .] [--n 256] [--seed 0] [--precision 32-true]

Needs models/diffusion, models/judge and data/prepared (after `dvc repro train_judge`). Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from diffinject.config import load_params, section
from diffinject.data.manifest import read_manifest
from diffinject.data.tensors import ImageTensors, load_split, num_classes_of
from diffinject.diffusion.model import DiffusionConfig, load_diffusion
from diffinject.diffusion.precision import autocast, resolve_precision
from diffinject.diffusion.quality import sample_from_noise
from diffinject.models.checkpoint import load_classifier
from diffinject.models.trainer import TrainerConfig
from diffinject.models.training import predict_logits
from diffinject.diffusion.synthetic_quality import to_grey

CONFIDENT = 0.9  # judge probability that counts as "recognisable"
FOREGROUND = 0.3 * 255  # brightest channel above this: a foreground (ink) pixel; backgrounds are ~0
HEAVY_QUANTILE = 0.995  # a sample with more ink than this quantile of real images counts as heavy


def ink(images: torch.Tensor) -> np.ndarray:
    """Per uint8 image (N, C, H, W): the fraction of its pixels that are foreground."""
    return (images.amax(1).float() > FOREGROUND).float().mean((1, 2)).numpy()


def judge_view(judge, images: torch.Tensor, trainer_cfg: TrainerConfig) -> tuple[np.ndarray, np.ndarray]:
    """(max class probability, predicted class) of the judge on the grey view of uint8 images."""
    n = len(images)
    grey = ImageTensors(to_grey(images), torch.zeros(n, dtype=torch.long), torch.arange(n), "samples")
    probs = predict_logits(judge, grey, 512, trainer_cfg).softmax(1)
    confidence, predicted = probs.max(1)
    return confidence.numpy(), predicted.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=".", help="a pipeline checkout after train_judge")
    parser.add_argument("--n", type=int, default=256, help="samples (and real test images) to judge")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default=None, help="override diffusion.precision (e.g. 32-true)")
    args = parser.parse_args()
    repo = Path(args.repo)
    params = load_params(repo / "params.yaml")
    cfg = section(params, "diffusion", DiffusionConfig)
    trainer_cfg = section(params, "trainer", TrainerConfig)
    trainer_cfg.enable_progress_bar = False
    manifest = read_manifest(repo / "data" / "prepared")
    test = load_split(repo / "data" / "prepared", "test", manifest)
    judge, _, _ = load_classifier(repo / "models" / "judge", num_classes=num_classes_of(manifest), image_shape=test.shape)
    unet, scheduler = load_diffusion(repo / "models" / "diffusion")
    unet.eval()
    cpu = torch.device("cpu")
    precision = resolve_precision(args.precision or cfg.precision, cpu)
    start = time.perf_counter()
    with autocast(precision, cpu):
        samples = sample_from_noise(unet, scheduler, args.n, cfg.sample_steps, torch.Generator().manual_seed(args.seed))
    seconds = time.perf_counter() - start
    real = test.images[torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))[: args.n]]
    s_conf, s_pred = judge_view(judge, samples, trainer_cfg)
    r_conf, _ = judge_view(judge, real, trainer_cfg)
    recognisable = s_conf >= CONFIDENT
    s_ink, r_ink = ink(samples), ink(real)
    result = {
        "script": "diffusion_sample_quality",
        "n": args.n,
        "sample_steps": cfg.sample_steps,
        "precision": precision,
        "sampling_seconds": round(seconds, 1),
        "samples_recognisable": round(float(recognisable.mean()), 3),
        "real_test_recognisable": round(float((r_conf >= CONFIDENT).mean()), 3),
        "classes_among_recognisable": int(len(np.unique(s_pred[recognisable]))),
        "samples_ink": round(float(s_ink.mean()), 3),
        "real_test_ink": round(float(r_ink.mean()), 3),
        "samples_heavier_than_real": round(float((s_ink > np.quantile(r_ink, HEAVY_QUANTILE)).mean()), 3),
    }
    print(f"recognisable digits (judge p >= {CONFIDENT}): samples {result['samples_recognisable']:.1%}, "
          f"real test images {result['real_test_recognisable']:.1%}; ink {result['samples_ink']:.1%} of pixels "
          f"against {result['real_test_ink']:.1%}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
