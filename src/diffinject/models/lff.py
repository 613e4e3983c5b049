"""Learning from Failure (LfF; Nam et al., NeurIPS 2020), the debiasing baseline.

Two networks of the same architecture train together on the same batches (LfF `train.py`):

    f_B  — the biased model, trained with GCE (q = 0.7), so it latches onto the easy shortcut (on a
       mixed train set, optionally on the original rows only: `biased_rows`);
    f_D  — the debiased model, trained with CE weighted per sample by how much f_B fails on it
           relative to f_D:

    ℓ_B(x), ℓ_D(x)     CE of f_B, f_D on x (no gradient), smoothed per sample by an EMA
                       over the epochs: ema ← α·ema + (1 − α)·ℓ (the first update takes ℓ), α = 0.7
    ℓ̂(x)              ema(x) / max over training samples of x's class of ema  (class-wise normalisation)
    W(x)               ℓ̂_B(x) / (ℓ̂_B(x) + ℓ̂_D(x) + ε)
    loss               mean GCE(f_B) + mean W · CE(f_D)

Bias-conflicting samples keep a high loss under f_B and so get weights near 1; aligned ones, easy for
f_B, get weights near 0. `self.net` is f_D: the network selected on validation, saved and evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning
import torch
import torch.nn.functional as F
from torch import nn

from diffinject.data.tensors import ImageTensors
from diffinject.errors import DiffinjectError
from diffinject.models.classifier import Batch, ClassifierModule, n_correct, to_unit_float
from diffinject.models.configs import OptimConfig
from diffinject.models.losses import DEFAULT_GCE_Q, gce_loss
from diffinject.models.trainer import TrainerConfig
from diffinject.models.training import FitResult, build_net, check_data, fit

# LfF's `--ema_alpha` default for Colored MNIST.
DEFAULT_EMA_ALPHA = 0.7
# LfF `train.py`: loss_weight = loss_b / (loss_b + loss_d + 1e-8).
WEIGHT_EPS = 1e-8


class LossEMA(nn.Module):
    """Per-sample exponential moving average of a loss, indexed by the sample's row in the train set
    (LfF `util.EMA`), with the per-class maximum LfF normalises by."""

    def __init__(self, targets: torch.Tensor, num_classes: int, alpha: float = DEFAULT_EMA_ALPHA):
        super().__init__()
        self.alpha = alpha
        self.num_classes = num_classes
        self.register_buffer("targets", targets.clone().long())  # (N,)
        self.register_buffer("value", torch.zeros(len(targets)))  # (N,)
        self.register_buffer("seen", torch.zeros(len(targets)))  # (N,) 1 once a sample was updated

    def update(self, loss: torch.Tensor, index: torch.Tensor) -> None:
        """ema[i] ← α·ema[i] + (1 − α·seen[i])·loss_i: the first update stores the loss itself."""
        loss = loss.detach().float()
        self.value[index] = self.alpha * self.value[index] + (1 - self.alpha * self.seen[index]) * loss
        self.seen[index] = 1.0

    def class_max(self) -> torch.Tensor:
        """(num_classes,) the largest EMA among the training samples of each class."""
        init = self.value.new_full((self.num_classes,), float("-inf"))
        return init.scatter_reduce(0, self.targets, self.value, reduce="amax")

    def normalised(self, index: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.value[index] / self.class_max()[targets]  # (B,)


def gather_all(module: lightning.LightningModule, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` from every device, flattened, so each device's per-sample EMAs see every sample under DDP."""
    if module.trainer.world_size == 1:
        return tensor
    return module.all_gather(tensor).flatten(0, 1)  # (world, B) -> (world·B,)


class RelativeDifficulty(nn.Module):
    """W(x) = ℓ̂_B(x) / (ℓ̂_B(x) + ℓ̂_D(x) + ε) from the class-normalised loss EMAs of a biased and a
    debiased branch: LfF's re-weighting, and DisEnt's (its Eq. 1, the same formula)."""

    def __init__(self, train_targets: torch.Tensor, num_classes: int, ema_alpha: float = DEFAULT_EMA_ALPHA):
        super().__init__()
        self.ema_b = LossEMA(train_targets, num_classes, ema_alpha)
        self.ema_d = LossEMA(train_targets, num_classes, ema_alpha)

    def forward(self, module: lightning.LightningModule, ce_b: torch.Tensor, ce_d: torch.Tensor,
                index: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Update both EMAs with this batch's CE (no gradient) and return W per sample, (B,)."""
        all_index = gather_all(module, index)
        self.ema_b.update(gather_all(module, ce_b), all_index)
        self.ema_d.update(gather_all(module, ce_d), all_index)
        loss_b = self.ema_b.normalised(index, targets)
        loss_d = self.ema_d.normalised(index, targets)
        return loss_b / (loss_b + loss_d + WEIGHT_EPS)


class BiasedRows(nn.Module):
    """The train rows a GCE-biased branch averages its loss over: all of them (LfF's own), or a mask
    (`biased_rows`, (N,) bool: e.g. only the original rows of a train set mixed with a synthetic pool)."""

    def __init__(self, n_rows: int, biased_rows: torch.Tensor | None = None):
        super().__init__()
        self.all_rows = biased_rows is None
        rows = torch.ones(n_rows) if biased_rows is None else biased_rows.float()
        if rows.shape != (n_rows,) or rows.sum() == 0:
            raise ValueError(f"biased_rows: expected a ({n_rows},) mask with at least one row, got {tuple(rows.shape)}")
        self.register_buffer("mask", rows)

    def mean(self, loss: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Mean of the per-sample `loss` (B,) over the batch's rows in the mask (0 when it has none)."""
        if self.all_rows:
            return loss.mean()  # LfF's own: bit for bit what the lff stage trained before biased_rows existed
        mask = self.mask[index]  # (B,)
        return (loss * mask).sum() / mask.sum().clamp(min=1.0)


class LfFModule(ClassifierModule):
    """f_D (`self.net`, CE, re-weighted) and f_B (`self.net_b`, GCE) trained together by one Adam over
    both (the same as LfF's two Adams with equal settings: Adam's update is per parameter), on the sum of
    the two losses (W carries no gradient, so each network gets only its own loss's gradient)."""

    def __init__(self, net: nn.Module, net_b: nn.Module, train_targets: torch.Tensor, num_classes: int,
                 gce_q: float = DEFAULT_GCE_Q, ema_alpha: float = DEFAULT_EMA_ALPHA, lr: float = 1e-3,
                 weight_decay: float = 0.0, biased_rows: torch.Tensor | None = None):
        super().__init__(net, loss="ce", gce_q=gce_q, lr=lr, weight_decay=weight_decay)
        self.net_b = net_b
        self.rows = BiasedRows(len(train_targets), biased_rows)
        self.difficulty = RelativeDifficulty(train_targets, num_classes, ema_alpha)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, targets, index = batch
        x = to_unit_float(images)
        logits_b = self.net_b(x)  # (B, num_classes)
        logits_d = self.net(x)
        ce_d = F.cross_entropy(logits_d, targets, reduction="none")
        ce_b = F.cross_entropy(logits_b.detach(), targets, reduction="none")
        weight = self.difficulty(self, ce_b, ce_d.detach(), index, targets)
        loss_b = self.rows.mean(gce_loss(logits_b, targets, self.gce_q), index)
        loss_d = (ce_d * weight).mean()
        n = len(targets)
        self._accumulate("train", n, loss=loss_d.detach() * n, acc=n_correct(logits_d, targets),
                         loss_b=loss_b.detach() * n, weight=weight.sum())
        loss = loss_b + loss_d
        self._optimise(loss)
        return loss.detach()


@dataclass
class LfFConfig(OptimConfig):
    """`lff.*`: Learning from Failure (biased GCE model + re-weighted debiased model)."""

    gce_q: float = DEFAULT_GCE_Q
    ema_alpha: float = DEFAULT_EMA_ALPHA
    epochs: int = 100  # 16 steps/epoch on 4,000 images; LfF keeps improving to ~100 epochs (3 seeds)

    def check(self, section: str) -> None:
        super().check(section)
        if not 0 < self.gce_q <= 1:
            raise DiffinjectError(f"params '{section}.gce_q': got {self.gce_q}, expected 0 < q <= 1")
        if not 0 <= self.ema_alpha < 1:
            raise DiffinjectError(f"params '{section}.ema_alpha': got {self.ema_alpha}, expected 0 <= alpha < 1")


def train_lff(train: ImageTensors, valid: ImageTensors, num_classes: int, cfg: LfFConfig,
              trainer_cfg: TrainerConfig, seed: int, section: str = "lff",
              biased_rows: torch.Tensor | None = None,
            callbacks: list | None = None) -> FitResult:
    """LfF: a GCE-biased and a re-weighted debiased network trained together; returns the debiased one.
    `biased_rows` ((N,) bool over `train`, None = all) are the rows the biased branch trains on."""
    cfg.check(section)
    check_data(train, valid)
    lightning.seed_everything(seed, workers=True, verbose=False)
    net_d, net_cfg = build_net(cfg, num_classes, train.shape, section)
    net_b, _ = build_net(cfg, num_classes, train.shape, section)
    module = LfFModule(net_d, net_b, train.targets, num_classes, gce_q=cfg.gce_q, ema_alpha=cfg.ema_alpha,
                       lr=cfg.lr, weight_decay=cfg.weight_decay, biased_rows=biased_rows)
    return fit(module, net_cfg, train, valid, cfg, trainer_cfg, seed, callbacks)
