"""DisEnt (Lee et al., NeurIPS 2021, "Learning Debiased Representation via Disentangled Feature
Augmentation"), a debiasing baseline that needs no bias label.

Two encoders, E_i (intrinsic) and E_b (bias), and two classifiers C_i, C_b over z = [z_i, z_b]
(models/disent_net.py). Each classifier gets gradients only through its own encoder's half of z
(the other half is detached), so the two halves disentangle:

    C_b([sg z_i, z_b]) trained with GCE (q = 0.7): the bias side latches onto the shortcut;
    C_i([z_i, sg z_b]) trained with W(x)·CE, where W = ℓ̂_b / (ℓ̂_i + ℓ̂_b) is LfF's relative difficulty
    from per-sample loss EMAs (α = 0.7), class-normalised (models/lff.RelativeDifficulty);

    L_dis  = W·CE(C_i(z), y) + λ_dis · GCE(C_b(z), y)                                   (Eq. 2)

and after `swap_after` steps, feature augmentation: z_b is permuted within the batch, z_swap =
[z_i, z_b[π]], which pairs an image's intrinsic features with another image's bias features — a
synthetic bias-conflicting sample in feature space:

    L_swap = W·CE(C_i(z_swap), y) + λ_swap_b · GCE(C_b(z_swap), y[π])                   (Eq. 3)
    L      = L_dis + λ_swap · L_swap                                                    (Eq. 4)

The intrinsic label stays y (z_i is the image's own); the bias side's label follows the swapped z_b.

Settings follow the official code's Colored-MNIST script (kakaoenterprise/Learning-Debiased-Disentangled,
`scripts/run_cmnist_ours.sh`): λ_dis = λ_swap_b = 10, λ_swap = 1, EMA α = 0.7, GCE q = 0.7, Adam,
batch 256. Departures, each for this project's CPU budget or its other rows: training is counted in
epochs (100, as our LfF) instead of 50,000 steps, so the swap starts after `swap_after` steps of our
run instead of 10,000 of theirs; their step decay of the learning rate in the swap phase (× 0.5 every
10,000 of 50,000 steps once the swap has started) is `lr_decay_every` (a fraction of the run, so it
scales with the data: 0.2 is theirs) and `lr_decay_gamma`; the backbone is `*.model` (our LfF MLP, 100-unit
features) instead of their 16-unit one; both branches use one Adam (the same as two with equal settings).
"""

from __future__ import annotations

import lightning
import torch
import torch.nn.functional as F

from diffinject.data.tensors import ImageTensors
from diffinject.models.classifier import Batch, ClassifierModule, n_correct, to_unit_float
from diffinject.models.disent_net import DisEntNet, build_disent
from diffinject.models.disent_config import DisEntConfig
from diffinject.models.lff import DEFAULT_EMA_ALPHA, BiasedRows, RelativeDifficulty
from diffinject.models.losses import DEFAULT_GCE_Q, gce_loss
from diffinject.models.networks import NetConfig, load_imagenet_weights
from diffinject.models.trainer import TrainerConfig
from diffinject.models.training import FitResult, check_data, fit


def swap_bias_features(z_i: torch.Tensor, z_b: torch.Tensor, targets: torch.Tensor,
                       perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DisEnt's feature augmentation: each row keeps its intrinsic features and its label, and takes the
    bias features (and, for the bias side, the label) of row perm[row]. Returns (z_i, z_b[π], y[π])."""
    return z_i, z_b[perm], targets[perm]


def head_logits(net: DisEntNet, z_i: torch.Tensor, z_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(C_i, C_b) logits over [z_i, z_b]; each head's gradient reaches only its own encoder (the other
    half of z is detached)."""
    return (net.fc_i(torch.cat([z_i, z_b.detach()], dim=1)),
            net.fc_b(torch.cat([z_i.detach(), z_b], dim=1)))


class DisEntModule(ClassifierModule):
    """`self.net` is the whole DisEntNet (both encoders, both heads): what is selected and saved; its
    forward is C_i over both features, as DisEnt evaluates."""

    def __init__(self, net: DisEntNet, train_targets: torch.Tensor, num_classes: int, gce_q: float = DEFAULT_GCE_Q,
                 ema_alpha: float = DEFAULT_EMA_ALPHA, lambda_dis: float = 10.0, lambda_swap_b: float = 10.0,
                 lambda_swap: float = 1.0, swap_after: int = 0, lr: float = 1e-3, weight_decay: float = 0.0,
                 biased_rows: torch.Tensor | None = None, lr_decay_every: float = 0.0, lr_decay_gamma: float = 0.5):
        super().__init__(net, loss="ce", gce_q=gce_q, lr=lr, weight_decay=weight_decay)
        self.lambda_dis = lambda_dis
        self.lambda_swap_b = lambda_swap_b
        self.lambda_swap = lambda_swap
        self.swap_after = swap_after
        self.lr_decay_every = lr_decay_every
        self.lr_decay_gamma = lr_decay_gamma
        self.rows = BiasedRows(len(train_targets), biased_rows)
        self.difficulty = RelativeDifficulty(train_targets, num_classes, ema_alpha)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, targets, index = batch
        net: DisEntNet = self.net
        z_i, z_b = net.features(to_unit_float(images))  # (B, width) each
        logits_i, logits_b = head_logits(net, z_i, z_b)
        ce_i = F.cross_entropy(logits_i, targets, reduction="none")
        ce_b = F.cross_entropy(logits_b.detach(), targets, reduction="none")
        weight = self.difficulty(self, ce_b, ce_i.detach(), index, targets)
        loss_i = (ce_i * weight).mean()
        loss_b = self.rows.mean(gce_loss(logits_b, targets, self.gce_q), index)
        loss = loss_i + self.lambda_dis * loss_b
        swapping = self.global_step > self.swap_after  # the official `step > curr_step`
        if swapping:
            perm = torch.randperm(len(targets), device=targets.device)
            z_i_s, z_b_s, targets_s = swap_bias_features(z_i, z_b, targets, perm)
            logits_swap_i, logits_swap_b = head_logits(net, z_i_s, z_b_s)
            loss_swap_i = (F.cross_entropy(logits_swap_i, targets, reduction="none") * weight).mean()
            # the bias side's rows follow the swapped z_b: a row counts if its bias features' image does
            loss_swap_b = self.rows.mean(gce_loss(logits_swap_b, targets_s, self.gce_q), index[perm])
            loss = loss + self.lambda_swap * (loss_swap_i + self.lambda_swap_b * loss_swap_b)
        n = len(targets)
        self._accumulate("train", n, loss=loss_i.detach() * n, acc=n_correct(logits_i, targets),
                         loss_b=loss_b.detach() * n, weight=weight.sum(),
                         swapping=loss_i.new_tensor(float(swapping) * n))
        if self.lr_decay_every > 0:
            decay_step = max(1, round(self.lr_decay_every * self.trainer.estimated_stepping_batches))
            self._set_lr(swap_lr(self.lr, self.global_step, self.swap_after, decay_step, self.lr_decay_gamma))
        self._optimise(loss)
        return loss.detach()

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizers().param_groups:
            group["lr"] = lr


def swap_lr(lr: float, step: int, swap_after: int, decay_step: int, gamma: float) -> float:
    """The official schedule (StepLR stepped only once the swap has started): lr × γ^⌊(step − swap_after) /
    decay_step⌋ after the swap starts, lr before it and when decay_step is 0."""
    if decay_step <= 0 or step <= swap_after:
        return lr
    return lr * gamma ** ((step - swap_after) // decay_step)


def train_disent(train: ImageTensors, valid: ImageTensors, num_classes: int, cfg: DisEntConfig,
                 trainer_cfg: TrainerConfig, seed: int, section: str = "disent",
                 biased_rows: torch.Tensor | None = None,
            callbacks: list | None = None) -> FitResult:
    """DisEnt on `train`, selected on `valid`; `biased_rows` ((N,) bool, None = all) are the rows the
    bias side's GCE averages over."""
    cfg.check(section)
    check_data(train, valid)
    lightning.seed_everything(seed, workers=True, verbose=False)
    net_cfg = NetConfig(arch=cfg.model, num_classes=num_classes, image_shape=tuple(train.shape))
    net = build_disent(net_cfg)
    if cfg.pretrained is not None:  # ImageNet weights into both encoders
        for encoder in (net.intrinsic, net.bias):
            load_imagenet_weights(encoder, cfg.pretrained, f"{section}.pretrained")
    module = DisEntModule(net, train.targets, num_classes, gce_q=cfg.gce_q, ema_alpha=cfg.ema_alpha,
                          lambda_dis=cfg.lambda_dis, lambda_swap_b=cfg.lambda_swap_b, lambda_swap=cfg.lambda_swap,
                          swap_after=cfg.swap_after, lr=cfg.lr, weight_decay=cfg.weight_decay, biased_rows=biased_rows,
                          lr_decay_every=cfg.lr_decay_every, lr_decay_gamma=cfg.lr_decay_gamma)
    return fit(module, net_cfg, train, valid, cfg, trainer_cfg, seed, callbacks)
