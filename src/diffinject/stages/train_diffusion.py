"""Stage `train_diffusion`: train the DDPM on the prepared train images (no labels) or load a user's
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
import time
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

from diffinject.config import load_params, section
from diffinject.data.manifest import MANIFEST_NAME, read_manifest
from diffinject.data.tensors import load_split, make_loader
from diffinject.diffusion.model import DiffusionConfig, build_scheduler, build_unet, load_diffusion, save_diffusion
from diffinject.diffusion.precision import autocast, resolve_precision
from diffinject.diffusion.quality import reconstruct, sample_from_noise
from diffinject.diffusion.training import DiffusionModule
from diffinject.devices import inference_device, skip_failing_nvml_probe
from diffinject.errors import DiffinjectError
from diffinject.fsutil import atomic_dir, write_json
from diffinject.imaging import save_grid
from diffinject.models.training import TrainerConfig
from diffinject.quiet import quiet_lightning
from diffinject.stages.common import METRICS, MODELS, PREPARED, common_inputs

OUT = MODELS / "diffusion"
RESUME = MODELS / ".diffusion-resume"
PLOTS = METRICS / "plots" / "diffusion"
# Reconstruction fidelity is measured on this many valid images with the injection's step counts.
N_RECONSTRUCT = 64
DEFAULT_INJECTION_STEPS = 20


def resume_key(cfg: DiffusionConfig, seed: int, prepared: Path) -> str:
    """Checkpoints are only resumed by a run with the same params, seed and training data."""
    digest = hashlib.sha256(json.dumps({"cfg": vars(cfg), "seed": seed}, sort_keys=True, default=str).encode())
    digest.update((prepared / MANIFEST_NAME).read_bytes())
    return digest.hexdigest()[:16]


def _trainer(trainer_cfg: TrainerConfig, cfg: DiffusionConfig, ckpt_dir: Path, precision: str) -> lightning.Trainer:
    callbacks: list[lightning.Callback] = [
        ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=cfg.checkpoint_every, save_last=True, save_top_k=0),
    ]
    if trainer_cfg.enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=trainer_cfg.progress_bar_refresh_rate))
    skip_failing_nvml_probe()
    quiet_lightning()
    return lightning.Trainer(
        accelerator=trainer_cfg.accelerator, devices=trainer_cfg.devices, strategy=trainer_cfg.strategy,
        num_nodes=trainer_cfg.num_nodes, precision=precision, deterministic=trainer_cfg.deterministic,
        max_steps=cfg.train_steps, max_epochs=-1, callbacks=callbacks, logger=False,
        enable_progress_bar=trainer_cfg.enable_progress_bar, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0,
    )


def train(cfg: DiffusionConfig, trainer_cfg: TrainerConfig, seed: int, root: Path):
    """Train (or resume training) the DDPM; returns (EMA unet, scheduler, seconds, is_global_zero)."""
    prepared = root / PREPARED
    train_set = load_split(prepared, "train")  # images only: the DDPM never sees a label
    lightning.seed_everything(seed, workers=True, verbose=False)
    c, h, w = train_set.shape
    if h != w:
        raise DiffinjectError(f"{prepared}: the DDPM needs square images, got {h}x{w}")
    unet, scheduler = build_unet(cfg, h, c), build_scheduler(cfg)
    module = DiffusionModule(unet, scheduler, cfg.lr, cfg.warmup_steps, cfg.train_steps, cfg.ema_decay)
    ckpt_dir = root / RESUME / resume_key(cfg, seed, prepared)
    last = ckpt_dir / "last.ckpt"
    if last.is_file():
        print(f"train_diffusion: resuming from {last}")
    precision = resolve_precision(cfg.precision, inference_device(trainer_cfg.accelerator))
    trainer = _trainer(trainer_cfg, cfg, ckpt_dir, precision)
    start = time.perf_counter()
    trainer.fit(module, make_loader(train_set, cfg.batch_size, shuffle=True, seed=seed),
                ckpt_path=str(last) if last.is_file() else None)
    seconds = time.perf_counter() - start
    if trainer.global_step < cfg.train_steps:
        raise DiffinjectError(f"train_diffusion stopped at step {trainer.global_step} of {cfg.train_steps}")
    return module.ema_unet(), scheduler, seconds, trainer.is_global_zero, ckpt_dir


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    cfg = section(params, "diffusion", DiffusionConfig)
    cfg.check()
    trainer_cfg, seed = common_inputs(params)
    metrics: dict[str, Any] = {}
    ckpt_dir = None
    if cfg.pretrained:
        unet, scheduler = load_diffusion(cfg.pretrained, build_scheduler(cfg))
        metrics["pretrained"] = str(cfg.pretrained)
        is_zero = True
    else:
        unet, scheduler, seconds, is_zero, ckpt_dir = train(cfg, trainer_cfg, seed, root)
        metrics.update(train_steps=cfg.train_steps, train_seconds=round(seconds, 1))
    if not is_zero:
        return metrics
    unet = unet.cpu().eval()
    precision = resolve_precision(cfg.precision, torch.device("cpu"))
    metrics.update(parameters=sum(p.numel() for p in unet.parameters()), precision=precision)
    # Fidelity of inversion -> reconstruction on valid images, with the injection's default step counts.
    injection = params.get("injection") or {}
    n_inv, n_gen = int(injection.get("n_inv_step", DEFAULT_INJECTION_STEPS)), int(injection.get("n_gen_step", DEFAULT_INJECTION_STEPS))
    valid = load_split(root / PREPARED, "valid", read_manifest(root / PREPARED))
    generator = torch.Generator().manual_seed(seed)
    subset = valid.images[torch.randperm(len(valid), generator=generator)[:N_RECONSTRUCT]]
    with autocast(precision, torch.device("cpu")):
        rec = reconstruct(unet, scheduler, subset, n_inv, n_gen)
        samples = sample_from_noise(unet, scheduler, cfg.sample_grid, cfg.sample_steps, generator)
    metrics["reconstruction"] = {"mse": round(rec.mse, 5), "n_images": len(subset), "n_inv_step": n_inv, "n_gen_step": n_gen}
    if rec.colour_kept is not None:
        metrics["reconstruction"]["colour_kept"] = rec.colour_kept
    with atomic_dir(root / OUT) as tmp:
        save_diffusion(unet, scheduler, tmp)
    save_grid(samples, root / PLOTS / "samples.png", nrow=8)
    pairs = torch.stack([subset[:32], rec.images[:32]], 1).flatten(0, 1)  # original, reconstruction, ...
    save_grid(pairs, root / PLOTS / "reconstruction.png", nrow=16)
    write_json(root / METRICS / "diffusion.json", metrics)
    if ckpt_dir is not None:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    print(f"train_diffusion: {metrics}")
    return metrics


def main(params_path: str = "params.yaml") -> None:
    run(load_params(params_path))
