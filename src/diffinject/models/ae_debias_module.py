"""The LightningModule of contrastive-autoencoder debiasing (`models.ae_debias`): only the AE trains,
the classifier stays frozen. Training has two phases (epochs are 0-based, `e = self.current_epoch`):

    e < P              pre-training: L = MSE(AE(x), x)                       (reconstruction only)
    e ≥ P              L = α · CE(cls(x̃), y) + θ · L_feat + λ_rec(e) · MSE(x̃, x)
                       λ_rec(e) = λ_rec while e < R, else 0

with P = `pretrain_epochs` and R = `rec_epochs`, BOTH counted from the start of training (so the
reconstruction term of the second phase lasts R − P epochs; none if R ≤ P). L_feat, the feature term,
and the optional dynamic α, θ are in `models.ae_debias_loss`.

From the seed repo (facts, read from its code; nothing copied):

- `train_autoencoder.py` argparse defaults: α (`--alpha`) = 1, θ (`--theta`) = 1, λ_rec (`--recon`)
  = 0.5, `--rec_epoch` 3, `--epoch` 100, `--early_stop` 15 (patience on validation accuracy), Adam with
  `--lr` 1e-3 and no weight decay, `--dyn` off, `--batch_size` 128. Its epoch 0 only validates the
  pre-trained AE, so `--rec_epoch 3` means two training epochs with the reconstruction term; the term is
  switched off for good when the epoch index reaches `--rec_epoch`. The example scripts
  (`scripts/autoencoder/*.sh`) instead sweep α over 0, 0.1, ..., 1 with θ = 1 − α, λ_rec = 0,
  `--rec_epoch 0`, batch 92, 100 epochs.
- `utils/rec_ae.py`: the reconstruction-only pre-training, MSE, Adam at the same lr, up to 5 × `--epoch`
  epochs with early stopping (patience 15) on the validation MSE. It has no fixed epoch count; here P is
  a fixed number (DEFAULT_PRETRAIN_EPOCHS, our choice).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffinject.errors import DiffinjectError
from diffinject.models.ae_debias_loss import dynamic_weights, feature_alignment_loss, features_and_logits
from diffinject.models.autoencoder import AEClassifier
from diffinject.models.classifier import Batch, ClassifierModule, n_correct, to_unit_float

# The seed's `--alpha` default (train_autoencoder.py): weight of the classification (CE) term.
DEFAULT_ALPHA = 1.0
# The seed's `--theta` default (train_autoencoder.py): weight of the feature term.
DEFAULT_THETA = 1.0
# The seed's `--recon` default (train_autoencoder.py): weight of the reconstruction term after pre-training.
DEFAULT_REC_WEIGHT = 0.5
# Ours: the seed pre-trains to an early stop on validation MSE (utils/rec_ae.py), not a fixed count;
# a few epochs are enough for this small AE to reproduce 28x28 digits.
DEFAULT_PRETRAIN_EPOCHS = 5
# The seed's `--rec_epoch 3` (train_autoencoder.py) leaves two training epochs with the reconstruction
# term (its epoch 0 only validates); here rec_epochs counts from the start of pre-training.
SEED_REC_TRAIN_EPOCHS = 2
DEFAULT_REC_EPOCHS = DEFAULT_PRETRAIN_EPOCHS + SEED_REC_TRAIN_EPOCHS
# The seed's `--epoch` (train_autoencoder.py): debiasing epochs after pre-training. Not used by the
# module (the Trainer's max_epochs ends training); for callers: max_epochs = P + DEFAULT_DEBIAS_EPOCHS.
DEFAULT_DEBIAS_EPOCHS = 100
# The seed's `--lr` default (train_autoencoder.py, also used for pre-training in utils/rec_ae.py).
DEFAULT_LR = 1e-3


class AEDebiasModule(ClassifierModule):
    """Trains `net.ae` in front of the frozen `net.classifier` (module docstring); `self.net` = cls ∘ AE.

    Validation and test are ClassifierModule's: CE and accuracy of cls(AE(x)).
    """

    def __init__(self, net: AEClassifier, alpha: float = DEFAULT_ALPHA, theta: float = DEFAULT_THETA,
                 rec_weight: float = DEFAULT_REC_WEIGHT, pretrain_epochs: int = DEFAULT_PRETRAIN_EPOCHS,
                 rec_epochs: int = DEFAULT_REC_EPOCHS, dynamic: bool = False, lr: float = DEFAULT_LR,
                 weight_decay: float = 0.0):
        super().__init__(net, loss="ce", lr=lr, weight_decay=weight_decay)
        for name, value in (("alpha", alpha), ("theta", theta), ("rec_weight", rec_weight),
                            ("pretrain_epochs", pretrain_epochs), ("rec_epochs", rec_epochs)):
            if value < 0:
                raise DiffinjectError(f"contrastive-AE debiasing: {name} {value}: expected >= 0")
        self.alpha = alpha
        self.theta = theta
        self.rec_weight = rec_weight
        self.pretrain_epochs = pretrain_epochs
        self.rec_epochs = rec_epochs
        self.dynamic = dynamic
        # The weights in use: alpha/theta until the first dynamic update, then the last batch's.
        self.alpha_now = alpha
        self.theta_now = theta
        net.classifier.requires_grad_(False)
        self._freeze_classifier_mode()

    def _freeze_classifier_mode(self) -> None:
        # eval mode: a ResNet classifier's BatchNorm normalises with its stored statistics and never
        # updates them, whatever Lightning does to the module's mode around validation.
        self.net.classifier.eval()

    def train(self, mode: bool = True) -> "AEDebiasModule":
        super().train(mode)
        self._freeze_classifier_mode()
        return self

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._freeze_classifier_mode()  # also covers a mode restored by attribute, not through train()

    def loss_weights(self, epoch: int) -> dict[str, float]:
        """The weights of the terms 'ce', 'feat', 'rec' of the loss at `epoch` (0-based, from the start
        of pre-training)."""
        if epoch < self.pretrain_epochs:
            return {"ce": 0.0, "feat": 0.0, "rec": 1.0}
        rec = self.rec_weight if epoch < self.rec_epochs else 0.0
        return {"ce": self.alpha_now, "feat": self.theta_now, "rec": rec}

    def loss_terms(self, x: torch.Tensor, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        """The loss and its terms on float images x (B, C, H, W) in [0, 1]: 'loss' (the weighted sum of
        `loss_weights(epoch)`), 'ce', 'feat', 'rec' (0-d) and 'logits' (B, K) of cls(AE(x)).

        In pre-training only 'rec' has a graph; 'ce' is a detached metric and 'feat' is 0 (the anchors
        need a second classifier pass that pre-training has no use for)."""
        weights = self.loss_weights(epoch)
        x_ae = self.net.ae(x)
        rec = F.mse_loss(x_ae, x)
        if epoch < self.pretrain_epochs:
            with torch.no_grad():
                logits = self.net.classifier(x_ae)
            ce = F.cross_entropy(logits, targets)
            return {"loss": weights["rec"] * rec, "ce": ce, "feat": torch.zeros_like(rec), "rec": rec,
                    "logits": logits}
        feat_out, logits = features_and_logits(self.net.classifier, x_ae)
        with torch.no_grad():  # the originals only define targets
            feat_orig, logits_orig = features_and_logits(self.net.classifier, x)
        ce = F.cross_entropy(logits, targets)
        feat = feature_alignment_loss(feat_out, logits.detach().argmax(1) == targets, feat_orig,
                                      logits_orig.argmax(1) == targets, targets)
        loss = weights["ce"] * ce + weights["feat"] * feat + weights["rec"] * rec
        return {"loss": loss, "ce": ce, "feat": feat, "rec": rec, "logits": logits}

    def update_dynamic_weights(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Set the weights of the next batch from this batch's accuracy (one device sync per step)."""
        acc = float(n_correct(logits, targets)) / len(targets)
        self.alpha_now, self.theta_now = dynamic_weights(acc, num_classes=logits.shape[1])

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, targets, _ = batch
        epoch = self.current_epoch
        terms = self.loss_terms(to_unit_float(images), targets, epoch)
        loss, logits = terms["loss"], terms["logits"]
        n = len(targets)
        self._accumulate("train", n, loss=loss.detach() * n, acc=n_correct(logits, targets),
                         ce=terms["ce"].detach() * n, rec=terms["rec"].detach() * n,
                         feat=terms["feat"].detach() * n)
        self._optimise(loss)
        if self.dynamic and epoch >= self.pretrain_epochs:
            self.update_dynamic_weights(logits, targets)
        return loss.detach()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # only the AE: the classifier is frozen
        return torch.optim.Adam(self.net.ae.parameters(), lr=self.lr, weight_decay=self.weight_decay)
