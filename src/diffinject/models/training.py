"""Training and inference entry points the stages call: `fit` a LightningModule and keep the epoch chosen
on the validation split, `train_classifier` (one network, CE or GCE) and `predict_logits`. The params
schemas are models/configs.py, the Trainer models/trainer.py (LfF, DisEnt, LC: their own modules).

Repeatability: `seed_everything(seed)` before the networks are built, a shuffling generator seeded by
`seed`, and `trainer.deterministic` (default true) give the same metrics for the same params on the same
machine. The epoch kept is chosen on the validation split only (`select`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import lightning
import torch
from lightning.pytorch.trainer.states import TrainerStatus
from torch import nn

from diffinject.data.loaders import ImageDataModule, make_loader
from diffinject.data.tensors import ImageTensors
from diffinject.errors import DiffinjectError
from diffinject.models.classifier import ClassifierModule, EpochSelector
from diffinject.models.configs import OptimConfig, TrainConfig
from diffinject.models.networks import NetConfig, build_network, load_imagenet_weights
from diffinject.models.trainer import TrainerConfig, build_trainer, quiet_worker_warning


@dataclass
class FitResult:
    """What a training run hands back to its stage."""

    state: dict[str, torch.Tensor]  # weights of the selected epoch, on CPU
    net_config: NetConfig
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    seconds: float = 0.0
    is_global_zero: bool = True  # only rank zero writes outputs under DDP

    @property
    def selected(self) -> dict[str, float]:
        return self.history[self.best_epoch - 1]


def build_net(cfg: OptimConfig, num_classes: int, image_shape: tuple[int, int, int], section: str) -> tuple[nn.Module, NetConfig]:
    net_cfg = NetConfig(arch=cfg.model, num_classes=num_classes, image_shape=tuple(image_shape))
    net = build_network(net_cfg)
    if cfg.pretrained is not None:
        load_imagenet_weights(net, cfg.pretrained, f"{section}.pretrained")
    return net, net_cfg


def check_data(train: ImageTensors, valid: ImageTensors) -> None:
    for data in (train, valid):
        if len(data) == 0:
            raise DiffinjectError(f"{data.source}: no images (expected at least one)")
    if train.shape != valid.shape:
        raise DiffinjectError(f"{valid.source}: images are {valid.shape} (C, H, W), expected {train.shape} like {train.source}")


def fit(module: ClassifierModule, net_cfg: NetConfig, train: ImageTensors, valid: ImageTensors,
        cfg: OptimConfig, trainer_cfg: TrainerConfig, seed: int,
        callbacks: list[lightning.Callback] | None = None) -> FitResult:
    """Train `module` for cfg.epochs (or until a callback stops it), validating every epoch, and return
    the selected epoch's weights."""
    selector = module.selector = EpochSelector(cfg.select)
    trainer = build_trainer(trainer_cfg, cfg.epochs, callbacks)
    data = ImageDataModule(train, valid, cfg.batch_size, seed)
    start = time.perf_counter()
    with quiet_worker_warning():
        trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - start
    if trainer.state.status != TrainerStatus.FINISHED or selector.state is None or selector.best_epoch is None:
        raise DiffinjectError(f"training stopped before the end ({trainer.state.status.value}); nothing written")
    return FitResult(
        state=selector.state, net_config=net_cfg, best_epoch=selector.best_epoch, history=selector.history,
        seconds=seconds, is_global_zero=trainer.is_global_zero,
    )


def train_classifier(train: ImageTensors, valid: ImageTensors, num_classes: int, cfg: TrainConfig,
                     trainer_cfg: TrainerConfig, seed: int, section: str,
                     callbacks: list[lightning.Callback] | None = None) -> FitResult:
    """One network with loss cfg.loss (ce | gce); `section` names the params section in messages."""
    cfg.check(section)
    check_data(train, valid)
    lightning.seed_everything(seed, workers=True, verbose=False)
    net, net_cfg = build_net(cfg, num_classes, train.shape, section)
    module = ClassifierModule(net, loss=cfg.loss, gce_q=cfg.gce_q, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return fit(module, net_cfg, train, valid, cfg, trainer_cfg, seed, callbacks)


def predict_logits(net: nn.Module, data: ImageTensors, batch_size: int, trainer_cfg: TrainerConfig) -> torch.Tensor:
    """Logits (N, num_classes) of `net` on every image of `data`, in order, as float32 on the CPU."""
    if len(data) == 0:
        raise DiffinjectError(f"{data.source}: no images to predict (expected at least one)")
    trainer = build_trainer(trainer_cfg, inference=True)
    with quiet_worker_warning():
        batches = trainer.predict(ClassifierModule(net), make_loader(data, batch_size, shuffle=False))
    return torch.cat([b.cpu() for b in batches])
