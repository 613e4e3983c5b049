"""DDPM training as a LightningModule: ε- or v-prediction MSE (Ho et al. 2020, Algorithm 1; Salimans &
Ho 2022; `diffusion.prediction_type`) with an EMA of the weights (diffusers' EMAModel, with its
warm-up), AdamW, linear warm-up then cosine decay; and `train_ddpm`, its resumable fit on the
classifiers' Trainer set-up (`models.training.build_trainer`) run by steps."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from lightning.pytorch.callbacks import ModelCheckpoint

from diffinject.data.loaders import make_loader
from diffinject.data.resumable import resumable_loader
from diffinject.data.tensors import ImageTensors
from diffinject.diffusion.conditioning import drop_labels, is_class_conditional, null_class
from diffinject.diffusion.model import DiffusionConfig, build_scheduler, build_unet, to_model_range
from diffinject.errors import DiffinjectError, first_line
from diffinject.models.trainer import TrainerConfig, build_trainer


class DiffusionModule(lightning.LightningModule):
    """Trains `unet` to predict the noise added by `scheduler`; batches are (images uint8, targets, ...).
    A class-conditional UNet sees each image's class, or the null class with probability `label_dropout`."""

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, lr: float, warmup_steps: int,
                 total_steps: int, ema_decay: float, label_dropout: float = 0.0):
        super().__init__()
        self.unet = unet
        self.label_dropout = label_dropout
        self.noise_scheduler = scheduler
        self.lr, self.warmup_steps, self.total_steps = lr, warmup_steps, total_steps
        self.ema = EMAModel(unet.parameters(), decay=ema_decay, use_ema_warmup=True)

    def on_fit_start(self) -> None:
        self.ema.to(self.device)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        x0 = to_model_range(batch[0])  # (B, C, H, W) in [-1, 1]
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
        x_t = self.noise_scheduler.add_noise(x0, noise, t)  # √ᾱ_t·x0 + √(1−ᾱ_t)·ε
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(x0, noise, t)  # √ᾱ_t·ε − √(1−ᾱ_t)·x0
        else:
            target = noise
        if is_class_conditional(self.unet):
            labels = drop_labels(batch[1].long(), self.label_dropout, null_class(self.unet))
            prediction = self.unet(x_t, t, class_labels=labels).sample
        else:
            prediction = self.unet(x_t, t).sample
        loss = F.mse_loss(prediction, target)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # here, not in on_train_batch_end: Lightning saves a step's checkpoint before the module's
        # on_train_batch_end runs, which would leave the EMA of a resumed run one update behind
        self.ema.step(self.unet.parameters())

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.unet.parameters(), lr=self.lr)

        def schedule(step: int) -> float:
            if step < self.warmup_steps:
                return (step + 1) / self.warmup_steps
            progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ema"] = self.ema.state_dict()
        # the noise and timesteps of the steps to come: a resumed run draws what the killed one would have
        checkpoint["rng"] = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.ema.load_state_dict(checkpoint["ema"])
        rng = checkpoint.get("rng", {})
        if "cpu" in rng:
            torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"], self.device if self.device.type == "cuda" else None)

    def ema_unet(self) -> UNet2DModel:
        """The UNet with the EMA weights copied in (the training weights are lost: call at the end)."""
        self.ema.copy_to(self.unet.parameters())
        return self.unet


def checkpoint_step(path: Path) -> int:
    """The optimizer steps a Lightning checkpoint was taken after (loaded weights-only: no code runs)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except Exception as exc:  # truncated, garbage, another kind of file: say which and what to do
        raise DiffinjectError(f"{path}: not a resumable training checkpoint ({first_line(exc)}); "
                              "delete it to train from the start") from exc


@dataclass
class TrainedDDPM:
    unet: UNet2DModel  # with the EMA weights
    scheduler: DDPMScheduler
    seconds: float
    is_global_zero: bool  # only rank zero writes outputs under DDP


def train_ddpm(cfg: DiffusionConfig, trainer_cfg: TrainerConfig, train_set: ImageTensors, seed: int,
               ckpt_dir: Path, precision: str, n_classes: int | None = None) -> TrainedDDPM:
    """Train the DDPM on `train_set`'s images (and with diffusion.class_conditional their class labels;
    never a bias label) for cfg.train_steps, checkpointing every
    cfg.checkpoint_every steps to `ckpt_dir` and resuming from its last.ckpt when one is there."""
    lightning.seed_everything(seed, workers=True, verbose=False)
    c, h, w = train_set.shape
    if h != w:
        raise DiffinjectError(f"{train_set.source}: the DDPM needs square images, got {h}x{w}")
    unet, scheduler = build_unet(cfg, h, c, n_classes), build_scheduler(cfg)
    module = DiffusionModule(unet, scheduler, cfg.lr, cfg.warmup_steps, cfg.train_steps, cfg.ema_decay, cfg.label_dropout)
    last = ckpt_dir / "last.ckpt"
    start_step = checkpoint_step(last) if last.is_file() else 0
    checkpoints = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=cfg.checkpoint_every, save_last=True, save_top_k=0)
    # A run by steps, no validation: the stage measures reconstruction on valid images afterwards.
    trainer = build_trainer(trainer_cfg, max_epochs=-1, callbacks=[checkpoints], precision=precision,
                            max_steps=cfg.train_steps, limit_val_batches=0)
    if trainer.world_size == 1:
        loader = resumable_loader(train_set, cfg.batch_size, seed, start_batch=start_step)
    else:
        # Lightning gives each rank its share through a DistributedSampler, which knows no batch to
        # start from: a resumed DDP run continues the weights, optimizer and step count, not the order
        loader = make_loader(train_set, cfg.batch_size, shuffle=True, seed=seed)
    if start_step:
        print(f"train_diffusion: resuming from {last} (step {start_step} of {cfg.train_steps})")
    start = time.perf_counter()
    with warnings.catch_warnings():
        # the loader above starts where the checkpoint stopped: Lightning cannot tell, and warns
        warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")
        trainer.fit(module, loader, ckpt_path=str(last) if start_step else None, weights_only=True)
    seconds = time.perf_counter() - start
    if trainer.global_step < cfg.train_steps:
        raise DiffinjectError(f"train_diffusion stopped at step {trainer.global_step} of {cfg.train_steps}")
    return TrainedDDPM(module.ema_unet(), scheduler, seconds, trainer.is_global_zero)
