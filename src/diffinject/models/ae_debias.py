"""Contrastive-autoencoder debiasing (Malta-Lab/CV-coop-contrastive-debias), a baseline that leaves the
biased classifier untouched and learns an image-to-image autoencoder in front of it.

    cls                the GCE-biased classifier, FROZEN (no gradient, BatchNorm in eval mode)
    AE                 a convolutional autoencoder, images in [0, 1] -> images in [0, 1]
    x̃ = AE(x)          the "unbiased" image the classifier sees; the model evaluated is cls ∘ AE

Training first pre-trains the AE on reconstruction alone, then adds the classification loss of
cls(x̃) and a feature term that pulls the features of every misclassified AE output toward the mean
features of the originals of its class that the biased classifier already classifies correctly. The
schedule and the seed's defaults are in `models.ae_debias_module`, the loss pieces in
`models.ae_debias_loss`.

From the seed repo (facts, read from its code; nothing copied):

- The seed's validation metric is the accuracy of cls(AE(x)), with the best epoch's AE kept — the
  same as model selection here (the validation step is ClassifierModule's, CE on self.net = cls ∘ AE),
  which may also pick a pre-training epoch, as the seed's epoch 0 may.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import lightning
from torch import nn

from diffinject.config import check_at_least
from diffinject.data.tensors import ImageTensors
from diffinject.errors import DiffinjectError
from diffinject.models.ae_debias_module import (
    DEFAULT_ALPHA,
    DEFAULT_LR,
    DEFAULT_PRETRAIN_EPOCHS,
    DEFAULT_REC_EPOCHS,
    DEFAULT_REC_WEIGHT,
    DEFAULT_THETA,
    AEDebiasModule,
)
from diffinject.models.autoencoder import DEFAULT_AE_WIDTH, AEClassifier, ConvAutoencoder  # noqa: F401 (re-exported)
from diffinject.models.networks import NetConfig
from diffinject.models.trainer import TrainerConfig
from diffinject.models.training import FitResult, check_data, fit


@dataclass
class AEConfig:
    """`ae.*`: the autoencoder trained in front of the frozen biased classifier (ae_debias). The seed's
    defaults (`models.ae_debias_module`) except epochs and batch size, CPU-sized."""

    width: int = DEFAULT_AE_WIDTH  # channels of the autoencoder's first conv (the second has 2x)
    alpha: float = DEFAULT_ALPHA  # weight of CE(cls(AE(x)), y)
    theta: float = DEFAULT_THETA  # weight of the feature-alignment loss
    rec_weight: float = DEFAULT_REC_WEIGHT  # weight of MSE(AE(x), x) after pre-training, until rec_epochs
    pretrain_epochs: int = DEFAULT_PRETRAIN_EPOCHS  # reconstruction only
    rec_epochs: int = DEFAULT_REC_EPOCHS  # the reconstruction term stops at this epoch (counted from the start)
    dynamic: bool = False  # alpha / theta from each batch's accuracy (the seed's --dyn)
    lr: float = DEFAULT_LR
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 20  # in all, pre-training included
    select: Literal["best", "last"] = "best"

    def check(self, section: str) -> None:
        check_at_least(self, section, 0, "lr", strict=True)
        check_at_least(self, section, 0, "alpha", "theta", "rec_weight", "weight_decay", "pretrain_epochs", "rec_epochs")
        check_at_least(self, section, 1, "width", "batch_size", "epochs")
        if self.pretrain_epochs >= self.epochs:
            raise DiffinjectError(f"params '{section}.pretrain_epochs': got {self.pretrain_epochs}, expected fewer "
                                  f"than {section}.epochs ({self.epochs}) so the debiasing loss ever trains")


def train_ae_debias(train: ImageTensors, valid: ImageTensors, classifier: nn.Module, classifier_cfg: NetConfig,
                    cfg: AEConfig, trainer_cfg: TrainerConfig, seed: int, section: str = "ae",
                    callbacks: list | None = None) -> FitResult:
    """An autoencoder trained in front of the frozen `classifier`; returns cls ∘ AE (front "ae")."""
    cfg.check(section)
    check_data(train, valid)
    lightning.seed_everything(seed, workers=True, verbose=False)
    net_cfg = NetConfig(arch=classifier_cfg.arch, num_classes=classifier_cfg.num_classes,
                        image_shape=tuple(train.shape), front="ae", front_width=cfg.width)
    net = AEClassifier(ConvAutoencoder(train.shape[0], cfg.width), classifier)
    module = AEDebiasModule(net, alpha=cfg.alpha, theta=cfg.theta, rec_weight=cfg.rec_weight,
                            pretrain_epochs=cfg.pretrain_epochs, rec_epochs=cfg.rec_epochs, dynamic=cfg.dynamic,
                            lr=cfg.lr, weight_decay=cfg.weight_decay)
    with warnings.catch_warnings():
        # the frozen classifier is in eval mode on purpose; Lightning warns about it at every fit
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
        return fit(module, net_cfg, train, valid, cfg, trainer_cfg, seed, callbacks)
