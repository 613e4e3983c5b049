"""Logit Correction (LC; Liu et al., ICLR 2023, "Avoiding spurious correlations via logit correction"),
a debiasing baseline that needs no bias label.

A GCE-trained biased branch f_b (learning rate × `biased_lr_ratio`) stands in for the unknown bias
attribute: each sample's pseudo bias is a = argmax softmax(f_b(x) / τ). A running estimate of the group
prior p(y | a) comes from f_b's probability of the true class, averaged per (label y, pseudo bias a)
group (`GroupPrior`: over the last epoch, or by the official EMA). The main network f trains on *corrected* logits

    LC(x, y) = CE(f(x) + log p(· | a)^η, y)                      (the LC loss; η = 1)

so a class that the sample's bias makes likely must be won by a larger margin: the paper shows this
is a consistent surrogate of group-balanced accuracy. Predictions use f alone. Group MixUp: each sample
is mixed, x' = λx + (1 − λ)x_j, with a partner x_j of the same class drawn from the batch's minority of
that class (samples whose pseudo bias is not their label; any sample of the class when it has none),
λ ~ U(1 − 2α, 1 − α), α = 0.5 · sigmoid_rampup(step, `mixup_rampup_steps`); the correction is mixed
the same way. Total loss: LC on the mixed batch + λ_dis · GCE(f_b(x), y).

Settings follow the official code (shengliu66/LC `learner.py`, amazon-science/lc-loss `loss.py` and
`group_mixup.py`) at its defaults, which its Colored-MNIST branch uses: τ = 1, η = 1, EMA α = 0.995
(`avg_type mv`), λ_dis = 1, q = 0.7, no MixUp ramp (curr_step 0), Adam. Departures: the biased branch
learns at the main one's rate (`biased_lr_ratio` 1.0; theirs 0.1, which in our 1,600-step runs leaves it
too weak to name the bias: docs/results.md); 100 epochs (as our LfF)
instead of their default 300; the backbone is `*.model`
(our LfF MLP); the official per-sample EMA of the group prior is applied once per batch (each group's
batch mean with weight 1 − α^n for its n samples, the first batch taking the mean) instead of a Python
loop over samples; under it a pseudo-minority group met by a few samples per epoch keeps its early
near-uniform value through a short run, so `prior_update: epoch` offers each group's mean over the last
epoch instead; the prior is normalised over classes (p(y | a), as their code does for every dataset but
Colored MNIST, and as the paper defines it), and a group not yet seen holds 1/K, not 0; the correction is centred per sample, which changes no
loss (softmax ignores a shift) and makes "no correction" read as zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import lightning
import torch
import torch.nn.functional as F
from torch import nn

from diffinject.config import check_at_least
from diffinject.data.tensors import ImageTensors
from diffinject.models.classifier import Batch, ClassifierModule, n_correct, to_unit_float
from diffinject.models.lff import BiasedRows, LfFConfig
from diffinject.models.losses import DEFAULT_GCE_Q, gce_loss
from diffinject.models.trainer import TrainerConfig
from diffinject.models.training import FitResult, build_net, check_data, fit

# The official `LogitCorrectionLoss`: log(prior^η + 1e-4), so an empty group costs a finite correction.
PRIOR_FLOOR = 1e-4


class GroupPrior(nn.Module):
    """Per (label y, pseudo bias a), the biased branch's mean probability of y; `prior()` is p(y | a).

    `update="ema"`: the official per-sample EMA (α per sample of the group). A group met by few samples
    per epoch (the pseudo-minority ones, ~30 images per epoch on 4,000 after the first epochs) then keeps
    its early near-uniform value for most of the run. `update="epoch"`: each group's mean over the last
    completed epoch (the running mean during the first), an EMA whose α follows the group's count, so
    every group's prior is about one epoch old whatever its size (`end_epoch` closes an epoch)."""

    def __init__(self, num_classes: int, alpha: float = 0.995, update: str = "ema"):
        super().__init__()
        self.num_classes = num_classes
        self.alpha = alpha
        self.update_rule = update
        self.register_buffer("epoch_total", torch.zeros(num_classes, num_classes))
        self.register_buffer("epoch_count", torch.zeros(num_classes, num_classes))
        # [y, a]; a group not yet seen holds the uninformative 1/K (the official code's 0 would make a group
        # that a batch stream has not met yet infinitely unlikely: a log(1e-4) correction)
        self.register_buffer("value", torch.full((num_classes, num_classes), 1.0 / num_classes))
        self.register_buffer("seen", torch.zeros(num_classes, num_classes, dtype=torch.bool))
        self.register_buffer("closed", torch.zeros(num_classes, num_classes, dtype=torch.bool))  # has a finished epoch's mean

    def end_epoch(self) -> None:
        """`update="epoch"`: each group met this epoch takes this epoch's mean; the others keep theirs."""
        if self.update_rule != "epoch":
            return
        met = self.epoch_count > 0
        self.value.copy_(torch.where(met, self.epoch_total / self.epoch_count.clamp(min=1), self.value))
        self.closed |= met
        self.epoch_total.zero_()
        self.epoch_count.zero_()

    def update(self, prob_of_label: torch.Tensor, labels: torch.Tensor, pseudo: torch.Tensor) -> None:
        """prob_of_label (B,): the biased branch's p(y_i | x_i); labels, pseudo (B,) class indices."""
        k = self.num_classes
        group = labels * k + pseudo  # (B,) flat index of (y, a)
        count = torch.zeros(k * k, device=group.device).index_add_(0, group, torch.ones_like(prob_of_label))
        total = torch.zeros(k * k, device=group.device).index_add_(0, group, prob_of_label.float())
        present = (count > 0).view(k, k)
        if self.update_rule == "epoch":
            self.epoch_total += total.view(k, k)
            self.epoch_count += count.view(k, k)
            running = present & ~self.closed  # no finished epoch yet: the running mean of what the group has met
            self.value.copy_(torch.where(running, self.epoch_total / self.epoch_count.clamp(min=1), self.value))
            self.seen |= present
            return
        mean = (total / count.clamp(min=1)).view(k, k)
        keep = torch.where(self.seen, self.alpha ** count.view(k, k), torch.zeros_like(mean))  # first batch: the mean
        self.value.copy_(torch.where(present, keep * self.value + (1 - keep) * mean, self.value))
        self.seen |= present

    def prior(self) -> torch.Tensor:
        """(num_classes, num_classes) p(y | a): each column a normalised over y."""
        return self.value / self.value.sum(dim=0, keepdim=True).clamp(min=torch.finfo(self.value.dtype).tiny)

    def correction(self, pseudo: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
        """(B, num_classes) log p(c | a_i)^η per sample and class, centred over classes."""
        log_prior = torch.log(self.prior()[:, pseudo].t() ** eta + PRIOR_FLOOR)
        return log_prior - log_prior.mean(dim=1, keepdim=True)


def lc_loss(logits: torch.Tensor, targets: torch.Tensor, correction: torch.Tensor) -> torch.Tensor:
    """The LC loss per sample, (B,): cross-entropy of the corrected logits."""
    return F.cross_entropy(logits + correction, targets, reduction="none")


def mixup_strength(step: int, rampup_steps: int) -> float:
    """α of the official group MixUp: 0.5 · sigmoid_rampup(step, rampup_steps) (exp(−5(1 − t)²))."""
    if rampup_steps == 0:
        return 0.5
    phase = 1.0 - min(max(step, 0), rampup_steps) / rampup_steps
    return 0.5 * math.exp(-5.0 * phase * phase)


def group_partners(targets: torch.Tensor, pseudo: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B,) for each sample, the row of its MixUp partner: a random minority sample of its class (pseudo
    bias ≠ label), or, when its class has none in the batch, a random permutation of its class."""
    partners = torch.empty_like(targets)
    for c in range(num_classes):
        rows = (targets == c).nonzero().squeeze(1)
        if len(rows) == 0:
            continue
        minority = rows[pseudo[rows] != c]
        if len(minority):
            partners[rows] = minority[torch.randint(len(minority), (len(rows),), device=rows.device)]
        else:
            partners[rows] = rows[torch.randperm(len(rows), device=rows.device)]
    return partners


class LCModule(ClassifierModule):
    """f (`self.net`: selected, saved, evaluated) on the LC loss over group-MixUp samples, and the
    GCE-biased branch f_b (`self.net_b`) that estimates each sample's bias."""

    def __init__(self, net: nn.Module, net_b: nn.Module, n_train: int, num_classes: int, gce_q: float = DEFAULT_GCE_Q,
                 ema_alpha: float = 0.995, tau: float = 1.0, eta: float = 1.0, lambda_dis: float = 1.0,
                 biased_lr_ratio: float = 1.0, mixup_rampup_steps: int = 0, lr: float = 1e-3,
                 weight_decay: float = 0.0, biased_rows: torch.Tensor | None = None, prior_update: str = "ema"):
        super().__init__(net, loss="ce", gce_q=gce_q, lr=lr, weight_decay=weight_decay)
        self.net_b = net_b
        self.num_classes = num_classes
        self.tau = tau
        self.eta = eta
        self.lambda_dis = lambda_dis
        self.biased_lr_ratio = biased_lr_ratio
        self.mixup_rampup_steps = mixup_rampup_steps
        self.rows = BiasedRows(n_train, biased_rows)
        self.group_prior = GroupPrior(num_classes, ema_alpha, prior_update)

    def on_train_epoch_end(self) -> None:
        self.group_prior.end_epoch()
        super().on_train_epoch_end()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, targets, index = batch
        x = to_unit_float(images)
        logits_b = self.net_b(x)
        probs_b = F.softmax(logits_b.detach().float() / self.tau, dim=1)
        pseudo = probs_b.argmax(1)  # the sample's estimated bias attribute
        self.group_prior.update(probs_b.gather(1, targets[:, None]).squeeze(1), targets, pseudo)
        correction = self.group_prior.correction(pseudo, self.eta)  # (B, K)
        alpha = mixup_strength(self.global_step, self.mixup_rampup_steps)
        lam = torch.empty(()).uniform_(1 - 2 * alpha, 1 - alpha).item()
        partner = group_partners(targets, pseudo, self.num_classes)
        # partners share the label, so the official λ·LC(y_a) + (1 − λ)·LC(y_b) is LC(y)
        mixed = lam * x + (1 - lam) * x[partner]
        logits = self.net(mixed)
        loss_main = lc_loss(logits, targets, lam * correction + (1 - lam) * correction[partner]).mean()
        loss_b = self.rows.mean(gce_loss(logits_b, targets, self.gce_q), index)
        n = len(targets)
        self._accumulate("train", n, loss=loss_main.detach() * n, acc=n_correct(logits, targets),
                         loss_b=loss_b.detach() * n, minority=(pseudo != targets).sum())
        loss = loss_main + self.lambda_dis * loss_b
        self._optimise(loss)
        return loss.detach()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([{"params": self.net.parameters()},
                                 {"params": self.net_b.parameters(), "lr": self.lr * self.biased_lr_ratio}],
                                lr=self.lr, weight_decay=self.weight_decay)


@dataclass
class LCConfig(LfFConfig):
    """`lc.*`: Logit Correction (a GCE-biased branch estimates the bias; corrected logits + group MixUp);
    GCE's q and the EMA's α checked as LfF's."""

    ema_alpha: float = 0.995  # EMA of the group prior (official --ema_alpha default)
    tau: float = 1.0  # temperature of the biased branch's softmax (--tau)
    eta: float = 1.0  # exponent of the prior in the correction (LogitCorrectionLoss eta)
    lambda_dis: float = 1.0  # weight of the biased branch's GCE (--lambda_dis_align)
    biased_lr_ratio: float = 1.0  # the biased branch's learning rate, as a fraction of lr (official: 0.1; docs/results.md)
    mixup_rampup_steps: int = 0  # steps over which the MixUp strength ramps up (--curr_step; 0: none)
    # ema: the official per-sample EMA (ema_alpha); epoch: each group's mean over the last epoch, an α that
    # follows the group's count (GroupPrior). Neither wins on every dataset: docs/results.md
    prior_update: Literal["ema", "epoch"] = "ema"
    epochs: int = 100

    def check(self, section: str) -> None:
        super().check(section)
        check_at_least(self, section, 0, "tau", "biased_lr_ratio", strict=True)
        check_at_least(self, section, 0, "eta", "lambda_dis", "mixup_rampup_steps")


def train_lc(train: ImageTensors, valid: ImageTensors, num_classes: int, cfg: LCConfig, trainer_cfg: TrainerConfig,
             seed: int, section: str = "lc", biased_rows: torch.Tensor | None = None,
            callbacks: list | None = None) -> FitResult:
    """LC on `train`, selected on `valid`; returns the main network. `biased_rows` ((N,) bool, None =
    all) are the rows the biased branch's GCE averages over."""
    cfg.check(section)
    check_data(train, valid)
    lightning.seed_everything(seed, workers=True, verbose=False)
    net, net_cfg = build_net(cfg, num_classes, train.shape, section)
    net_b, _ = build_net(cfg, num_classes, train.shape, section)
    module = LCModule(net, net_b, len(train), num_classes, gce_q=cfg.gce_q, ema_alpha=cfg.ema_alpha, tau=cfg.tau,
                      eta=cfg.eta, lambda_dis=cfg.lambda_dis, biased_lr_ratio=cfg.biased_lr_ratio,
                      mixup_rampup_steps=cfg.mixup_rampup_steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
                      biased_rows=biased_rows, prior_update=cfg.prior_update)
    return fit(module, net_cfg, train, valid, cfg, trainer_cfg, seed, callbacks)
