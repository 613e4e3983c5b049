"""The in-pipeline DDPM: a small diffusers UNet2DModel and its noise schedule, built from params,
saved and loaded with diffusers' own `save_pretrained` / `from_pretrained`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.utils import is_accelerate_available
from safetensors import SafetensorError
from torch import nn

from diffinject.diffusion.conditioning import default_to_null_class
from diffinject.diffusion.ddim import PREDICTION_TYPES, checked_prediction_type
from diffinject.diffusion.precision import check_precision
from diffinject.errors import DiffinjectError, first_line

UNET_DIR = "unet"
SCHEDULER_DIR = "scheduler"


@dataclass
class DiffusionConfig:
    pretrained: str | None = None  # a local diffusers UNet2DModel folder; null trains one here
    block_out_channels: list[int] = field(default_factory=lambda: [16, 32, 32])
    layers_per_block: int = 1
    norm_num_groups: int = 8  # GroupNorm groups; must divide every block's channel count
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    # What the UNet learns to predict. v (Salimans & Ho 2022) keeps the implied x_0 bounded at high t,
    # where ε's x_0 = (x_t − √(1−ᾱ)·ε)/√ᾱ multiplies errors by up to 1/√ᾱ_T ≈ 160: measured on the
    # default CPU model, ε-prediction draws blobs with 2.7x the real ink (README), v does not.
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    train_steps: int = 4000  # its cost on both CPU classes: docs/benchmarks.md
    batch_size: int = 64
    lr: float = 1.0e-3
    warmup_steps: int = 200  # linear lr warm-up, then cosine decay to 0 over train_steps
    ema_decay: float = 0.999  # upper bound of the EMA decay (diffusers' EMAModel warm-up ramps up to it)
    checkpoint_every: int = 500  # steps between resumable checkpoints
    sample_grid: int = 64  # images generated from noise for the sample-grid plot
    sample_steps: int = 250  # ancestral DDPM steps of that grid (fewer: faster, noisier; docs/diffusion_notes.md)
    precision: str = "auto"  # DDPM training and inference: auto | 32-true | bf16-mixed | 16-mixed (precision.py)
    # The class label as a condition (diffusion/conditioning.py): one embedding per class plus a null
    # class, which stands in for the label with probability label_dropout in training (classifier-free
    # guidance, `injection.guidance_scale`). Class labels only, never a bias label.
    class_conditional: bool = False
    label_dropout: float = 0.1

    def check(self) -> None:
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise DiffinjectError(
                    f"params 'diffusion.norm_num_groups': {self.norm_num_groups} does not divide block channels {self.block_out_channels}")
        check_precision(self.precision)
        if self.prediction_type not in PREDICTION_TYPES:
            raise DiffinjectError(
                f"params 'diffusion.prediction_type': got {self.prediction_type!r}, expected one of {', '.join(PREDICTION_TYPES)}")
        if not 0 <= self.label_dropout < 1:
            raise DiffinjectError(f"params 'diffusion.label_dropout': got {self.label_dropout}, expected a probability in [0, 1)")
        if self.train_steps < 1 or self.batch_size < 1:
            raise DiffinjectError("params 'diffusion.train_steps' and 'diffusion.batch_size': expected positive integers")


def build_unet(cfg: DiffusionConfig, image_size: int, channels: int, n_classes: int | None = None) -> UNet2DModel:
    """A UNet2DModel without attention (cheap on CPU); h-space is the output of its `mid_block`. With
    `diffusion.class_conditional`, `n_classes` class embeddings plus the null class's."""
    cfg.check()
    if cfg.class_conditional and not n_classes:
        raise ValueError("build_unet: a class-conditional UNet needs n_classes")
    n = len(cfg.block_out_channels)
    if image_size % (2 ** (n - 1)):
        raise DiffinjectError(
            f"params 'diffusion.block_out_channels': {n} levels halve the image {n - 1} times; {image_size} px is not divisible by {2 ** (n - 1)}")
    return default_to_null_class(UNet2DModel(
        sample_size=image_size, in_channels=channels, out_channels=channels,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
        add_attention=False, norm_num_groups=cfg.norm_num_groups,
        num_class_embeds=n_classes + 1 if cfg.class_conditional else None,
    ))


def build_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction_type)


def save_diffusion(unet: UNet2DModel, scheduler: DDPMScheduler, out: Path) -> None:
    unet.save_pretrained(out / UNET_DIR)
    scheduler.save_pretrained(out / SCHEDULER_DIR)


def load_diffusion(path: str | Path, default_scheduler: DDPMScheduler | None = None,
                   image_shape: tuple[int, ...] | None = None) -> tuple[UNet2DModel, DDPMScheduler]:
    """Load `path/unet` (or `path` itself when it is a UNet folder) and its scheduler.

    A user's UNet without a scheduler folder gets `default_scheduler` (the one in params). With
    `image_shape` (C, H, W) of the data it will see, a UNet built for other images is a one-line error."""
    path = Path(path)
    unet_dir = path / UNET_DIR if (path / UNET_DIR / "config.json").is_file() else path
    if not (unet_dir / "config.json").is_file():
        raise DiffinjectError(f"{path}: not a diffusers UNet2DModel folder (expected config.json and weights, or a unet/ subfolder)")
    try:
        # diffusers defaults to low_cpu_mem_usage, which needs `accelerate` (not a dependency) and
        # otherwise falls back to False with a multi-line warning at every load
        unet = UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=is_accelerate_available())
    except (OSError, ValueError, RuntimeError, TypeError, SafetensorError) as exc:
        # garbage or truncated weights, a config.json of another model (weights of the wrong shapes)
        raise DiffinjectError(f"{unet_dir}: cannot load a UNet2DModel ({first_line(exc)})") from exc
    if getattr(unet, "mid_block", None) is None:
        raise DiffinjectError(f"{unet_dir}: the UNet has no mid block, so it has no h-space to inject into")
    if image_shape is not None:
        check_fits(unet, tuple(image_shape), unet_dir)
    default_to_null_class(unet)
    thread_invariant_pointwise_convs(unet)
    if (path / SCHEDULER_DIR / "scheduler_config.json").is_file():
        try:
            scheduler = DDPMScheduler.from_pretrained(path / SCHEDULER_DIR)
        except (OSError, ValueError, TypeError) as exc:
            raise DiffinjectError(f"{path / SCHEDULER_DIR}: cannot load a DDPMScheduler ({first_line(exc)})") from exc
    elif default_scheduler is not None:
        scheduler = default_scheduler
    else:
        raise DiffinjectError(f"{path}: no scheduler/ folder and no default schedule given")
    try:
        checked_prediction_type(scheduler)
    except ValueError as exc:
        raise DiffinjectError(f"{path}: the scheduler's {exc}") from exc
    return unet, scheduler


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution whose fp32 CPU result does not depend on the thread count. oneDNN's fp32 1x1
    convolution on small batches splits its work by thread, and the sums come out in another order: on
    an AVX2 or AVX512 CPU, 1 and 2 threads differ in the last bit (the resnets' channel-changing
    shortcuts; every 3x3 convolution and the bf16 path are invariant), which after 20 DDIM steps moves
    a pixel of a pool image, so a sharded `inject` (each torchrun rank on fewer threads) would not
    write the one-process files. Here it is a matrix product, invariant at any thread count (its cost:
    docs/benchmarks.md, "The sharded injection on both CPU classes")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
            return super().forward(x)
        b, c, h, w = x.shape
        out = torch.matmul(self.weight.view(self.out_channels, c), x.reshape(b, c, h * w))  # (B, O, H·W)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1)
        return out.view(b, self.out_channels, h, w)


def thread_invariant_pointwise_convs(unet: nn.Module) -> None:
    """Every plain 1x1 convolution of `unet` becomes a PointwiseConv2d (same weights and state_dict keys)."""
    for module in unet.modules():
        if type(module) is nn.Conv2d and module.kernel_size == (1, 1) and module.groups == 1:
            module.__class__ = PointwiseConv2d


def check_fits(unet: UNet2DModel, image_shape: tuple[int, ...], where: Path) -> None:
    """The UNet's config.json (in/out channels, sample_size) must describe `image_shape` (C, H, W)."""
    c, h, w = image_shape
    size = unet.config.sample_size
    built = (size, size) if isinstance(size, int) else tuple(size)
    if (unet.config.in_channels, unet.config.out_channels) != (c, c) or built != (h, w):
        raise DiffinjectError(
            f"{where}: the UNet is built for {unet.config.in_channels}x{built[0]}x{built[1]} images (config.json in_channels, "
            f"sample_size), but the data is {c}x{h}x{w}; use a UNet of the data's size or set data.image_size to {built[0]}")


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) in [0, 255] -> float in [-1, 1], the DDPM's data range."""
    return images_uint8.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 in [0, 255]."""
    return x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
