"""Stage `train_diffusion`: train the DDPM on the prepared train images (with
`diffusion.class_conditional`, and their class labels; never a bias label) or load a user's
diffusers UNet folder -> models/diffusion/ (save_pretrained), a sample grid and metrics/diffusion.json
with DDIM reconstruction fidelity on valid images.

Resumable: checkpoints every `diffusion.checkpoint_every` steps go to models/.diffusion-resume/<key>/
(outside the DVC output, so DVC does not delete them), and a re-run with the same params, seed and
data continues from the last one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from diffinject.config import StageParams, slice_of
from diffinject.data.manifest import MANIFEST_NAME, read_manifest
from diffinject.data.tensors import load_split, num_classes_of
from diffinject.devices import inference_device
from diffinject.diffusion.injection_params import InjectionParams
from diffinject.diffusion.model import DiffusionConfig, build_scheduler, load_diffusion, save_diffusion
from diffinject.diffusion.precision import autocast, resolve_precision
from diffinject.diffusion.quality import reconstruct, sample_from_noise
from diffinject.diffusion.training import train_ddpm
from diffinject.fsutil import atomic_dir, write_json
from diffinject.imaging import save_grid
from diffinject.models.trainer import TrainerConfig
from diffinject.stages.paths import DIFFUSION, DIFFUSION_RESUME, METRICS, PLOTS, PREPARED

# Reconstruction fidelity is measured on this many valid images with the injection's step counts.
N_RECONSTRUCT = 64
PARAMS = StageParams({"trainer": TrainerConfig, "diffusion": DiffusionConfig,
                      "injection": slice_of(InjectionParams, "n_inv_step", "n_gen_step")})


def resume_key(cfg: DiffusionConfig, seed: int, prepared: Path) -> str:
    """Checkpoints are only resumed by a run with the same params, seed and training data."""
    digest = hashlib.sha256(json.dumps({"cfg": vars(cfg), "seed": seed}, sort_keys=True, default=str).encode())
    digest.update((prepared / MANIFEST_NAME).read_bytes())
    return digest.hexdigest()[:16]


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    p = PARAMS.load(params)
    cfg, seed = p.diffusion, p.seed
    prepared = root / PREPARED
    manifest = read_manifest(prepared)
    metrics: dict[str, Any] = {}
    ckpt_dir = None
    if cfg.pretrained:
        shape = load_split(prepared, "valid").shape  # (C, H, W) of the data it will invert
        unet, scheduler = load_diffusion(cfg.pretrained, build_scheduler(cfg), image_shape=shape)
        metrics["pretrained"] = str(cfg.pretrained)
        is_zero = True
    else:
        ckpt_dir = root / DIFFUSION_RESUME / resume_key(cfg, seed, prepared)
        precision = resolve_precision(cfg.precision, inference_device(p.trainer.accelerator))
        # images, and with diffusion.class_conditional their class labels: never a bias label
        train_set = load_split(prepared, "train", manifest)
        trained = train_ddpm(cfg, p.trainer, train_set, seed, ckpt_dir, precision, num_classes_of(manifest))
        unet, scheduler, is_zero = trained.unet, trained.scheduler, trained.is_global_zero
        metrics.update(train_steps=cfg.train_steps, train_seconds=round(trained.seconds, 1))
    if not is_zero:
        return metrics
    unet = unet.cpu().eval()
    precision = resolve_precision(cfg.precision, torch.device("cpu"))
    metrics.update(parameters=sum(w.numel() for w in unet.parameters()), precision=precision)
    # Fidelity of inversion -> reconstruction on valid images, with the injection's step counts.
    n_inv, n_gen = p.injection.n_inv_step, p.injection.n_gen_step
    valid = load_split(prepared, "valid", manifest)
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(valid), generator=generator)[:N_RECONSTRUCT]
    subset = valid.images[chosen]
    with autocast(precision, torch.device("cpu")):
        rec = reconstruct(unet, scheduler, subset, n_inv, n_gen, valid.targets[chosen])
        samples = sample_from_noise(unet, scheduler, cfg.sample_grid, cfg.sample_steps, generator)
    metrics["reconstruction"] = {"mse": round(rec.mse, 5), "n_images": len(subset), "n_inv_step": n_inv, "n_gen_step": n_gen}
    if rec.colour_kept is not None:
        metrics["reconstruction"]["colour_kept"] = rec.colour_kept
    with atomic_dir(root / DIFFUSION) as tmp:
        save_diffusion(unet, scheduler, tmp)
    save_grid(samples, root / PLOTS / "diffusion" / "samples.png", nrow=8)
    pairs = torch.stack([subset[:32], rec.images[:32]], 1).flatten(0, 1)  # original, reconstruction, ...
    save_grid(pairs, root / PLOTS / "diffusion" / "reconstruction.png", nrow=16)
    write_json(root / METRICS / "diffusion.json", metrics)
    if ckpt_dir is not None:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    print(f"train_diffusion: {metrics}")
    return metrics
