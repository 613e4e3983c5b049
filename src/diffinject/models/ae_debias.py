"""Contrastive-autoencoder debiasing (Malta-Lab/CV-coop-contrastive-debias), a baseline that leaves the
biased classifier untouched and learns an image-to-image autoencoder in front of it.

    cls                the GCE-biased classifier, FROZEN (no gradient, BatchNorm in eval mode)
    AE                 a convolutional autoencoder, images in [0, 1] -> images in [0, 1]
    x̃ = AE(x)          the "unbiased" image the classifier sees; the model evaluated is cls ∘ AE

Training has two phases (epochs are 0-based, `e = self.current_epoch`):

    e < P              pre-training: L = MSE(AE(x), x)                       (reconstruction only)
    e ≥ P              L = α · CE(cls(x̃), y) + θ · L_feat + λ_rec(e) · MSE(x̃, x)
                       λ_rec(e) = λ_rec while e < R, else 0

with P = `pretrain_epochs` and R = `rec_epochs`, BOTH counted from the start of training (so the
reconstruction term of the second phase lasts R − P epochs; none if R ≤ P). With φ the classifier's
penultimate features, the feature term of a batch is

    c_i  = [argmax cls(x_i) = y_i]                 originals the classifier gets right
    ĉ_i  = [argmax cls(x̃_i) = y_i]                 AE outputs it gets right
    a_k  = mean{ φ(x_j) : y_j = k, c_j }           class-k anchor, no gradient
    M    = { i : ¬ĉ_i and class y_i has an anchor } misclassified outputs
    L_feat = (1/|M|) Σ_{i∈M} (1/F) ‖φ(x̃_i) − a_{y_i}‖²        (0 when M is empty)

i.e. the features of every misclassified AE output are pulled toward the mean features of the
originals of its class that the biased classifier already classifies correctly. Only the AE trains.

Optional dynamic weights (the seed's `--dyn`), from the accuracy `acc` of cls(x̃) on a batch, K classes:

    w = 1 − (acc − 1/K) / (1 − 1/K)        1 − accuracy rescaled so chance = 1, perfect = 0
    α = max(0.1, w),   θ = min(0.9, 1 − w)

low accuracy favours the classification term, high accuracy the feature term. As in the seed, the
weights computed on a batch apply from the next batch on, and the initial α, θ serve until then.

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
- `utils/metrics.py` `define_weight` and the `--dyn` block of `train_autoencoder.py`: the dynamic
  weights above, with K hard-coded to 2 (CelebA attributes are binary); here K is the classifier's
  number of outputs. Below-chance accuracy gives w > 1 and so θ < 0 in the seed (no lower clamp); kept.
- `losses/contrastive.py` `ReconstructionContrastiveLoss` (the feature loss it trains with; the SupCon
  `ContrastiveLoss` in the same file is unused, and so is `--temperature`): distance "l2" = the mean over
  feature elements of the squared difference — the (1/F)‖·‖² used here. It differs in three ways that
  this module does not copy: (1) it L2-normalises the AE-output features over the channel axis but not
  the original ones, so the two are on different scales and the loss cannot reach 0 at the target;
  (2) it compares each sample's masked output features with the SAME sample's masked original
  features, so a misclassified output is compared with zeros (its own comment flags this as a to-do),
  rather than with the features of correctly classified originals; (3) both masks come from the AE
  output's correctness, and it sums over the two classes and divides by the batch size. The features
  are intermediate conv maps (`--feat_layer`, default `preconv`, scripts `layer1`), not the penultimate
  layer used here. The anchor definition (class mean over correct originals) and the mean over the
  misclassified rows follow this project's specification of the intended loss.
- The seed's validation metric is the accuracy of cls(AE(x)), with the best epoch's AE kept — the
  same as model selection here (the validation step is ClassifierModule's, CE on self.net = cls ∘ AE),
  which may also pick a pre-training epoch, as the seed's epoch 0 may.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import lightning
import torch
import torch.nn.functional as F
from torch import nn

from diffinject.config import check_at_least
from diffinject.data.tensors import ImageTensors
from diffinject.errors import DiffinjectError
from diffinject.models.autoencoder import DEFAULT_AE_WIDTH, AEClassifier, ConvAutoencoder  # noqa: F401 (re-exported)
from diffinject.models.classifier import Batch, ClassifierModule, n_correct, to_unit_float
from diffinject.models.networks import MLP, NetConfig, ResNet18
from diffinject.models.training import FitResult, TrainerConfig, check_data, fit

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
# The seed's `--dyn` clamps (train_autoencoder.py): alpha = max(0.1, w), theta = min(0.9, 1 - w).
DYNAMIC_MIN_ALPHA = 0.1
DYNAMIC_MAX_THETA = 0.9
# The seed's define_weight is called with n_classes=2 (CelebA's binary attributes).
SEED_NUM_CLASSES = 2
def _features_and_logits(classifier: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features (B, F) and logits (B, K) of `classifier` on x, from one forward pass."""
    if isinstance(classifier, MLP):
        feat = classifier.feature(x.flatten(1))
        return feat, classifier.classifier(feat)
    if isinstance(classifier, ResNet18):
        body = classifier.body
        h = (x - classifier.mean) / classifier.std  # the normalisation ResNet18.forward applies
        h = body.maxpool(body.relu(body.bn1(body.conv1(h))))
        h = body.layer4(body.layer3(body.layer2(body.layer1(h))))
        feat = torch.flatten(body.avgpool(h), 1)  # (B, 512)
        return feat, body.fc(feat)
    raise DiffinjectError(
        f"contrastive-AE debiasing: no penultimate layer known for a {type(classifier).__name__} classifier (expected MLP or ResNet18)"
    )


def classifier_features(classifier: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The classifier's penultimate features (B, F) on float images x (B, C, H, W) in [0, 1]:
    MLP — the hidden layers' output; ResNet18 — everything but `fc` (normalise, ..., avgpool, flatten)."""
    return _features_and_logits(classifier, x)[0]


def feature_alignment_loss(feat_out: torch.Tensor, correct_out: torch.Tensor, feat_orig: torch.Tensor,
                           correct_orig: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L_feat (module docstring): the mean over misclassified AE outputs i (¬correct_out, and the class
    has at least one correct original) of (1/F)‖feat_out_i − a_{y_i}‖², a_k the mean of feat_orig over
    the correct originals of class k, detached. F = the feature size; (1/F) is the seed's "l2" distance
    (a mean over elements), i.e. the squared Euclidean distance divided by F.

    feat_*: (B, F); correct_*: (B,) bool; targets: (B,). Returns a 0-d tensor, 0 when no row qualifies
    (still connected to feat_out's graph, so the total loss can always be back-propagated).

    The anchors come from a (B, B) same-class-and-correct matrix rather than a loop over classes: no
    class count is needed and nothing waits on the device.
    """
    # float32 throughout: counts above 256 are not exact in bfloat16, and F is small
    feat_out = feat_out.float()
    feat_orig = feat_orig.detach().float()  # anchors are targets, not trained
    # pick[i, j] = 1 when original j is a correct sample of i's class
    pick = ((targets[:, None] == targets[None, :]) & correct_orig[None, :]).float()  # (B, B)
    n_anchor = pick.sum(1)  # (B,)
    anchor = (pick @ feat_orig) / n_anchor.clamp(min=1)[:, None]  # (B, F), a_{y_i} per row
    rows = (~correct_out & (n_anchor > 0)).float()  # (B,) the set M
    dist = (feat_out - anchor).pow(2).mean(1)  # (B,)
    return (dist * rows).sum() / rows.sum().clamp(min=1)


def dynamic_weights(batch_acc: float, num_classes: int = SEED_NUM_CLASSES, min_alpha: float = DYNAMIC_MIN_ALPHA,
                    max_theta: float = DYNAMIC_MAX_THETA) -> tuple[float, float]:
    """(α, θ) from a batch accuracy, as the seed's `--dyn`:

        w = 1 − (acc − 1/K) / (1 − 1/K),   α = max(min_alpha, w),   θ = min(max_theta, 1 − w)

    e.g. K = 2: acc 1 -> (0.1, 0.9); acc 0.75 -> (0.5, 0.5); acc 0.5 (chance) -> (1, 0).
    """
    if num_classes < 2:
        raise DiffinjectError(f"dynamic weights: number of classes {num_classes}: expected at least 2")
    chance = 1.0 / num_classes
    w = 1.0 - (batch_acc - chance) / (1.0 - chance)
    return max(min_alpha, w), min(max_theta, 1.0 - w)


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
        feat_out, logits = _features_and_logits(self.net.classifier, x_ae)
        with torch.no_grad():  # the originals only define targets
            feat_orig, logits_orig = _features_and_logits(self.net.classifier, x)
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


@dataclass
class AEConfig:
    """`ae.*`: the autoencoder trained in front of the frozen biased classifier (ae_debias). The seed's
    defaults (above) except epochs and batch size, CPU-sized."""

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
                    cfg: AEConfig, trainer_cfg: TrainerConfig, seed: int, section: str = "ae") -> FitResult:
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
        return fit(module, net_cfg, train, valid, cfg, trainer_cfg, seed)
