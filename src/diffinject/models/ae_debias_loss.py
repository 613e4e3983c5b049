"""The loss pieces of contrastive-autoencoder debiasing (`models.ae_debias`): the frozen classifier's
penultimate features, the feature-alignment term and the seed's dynamic weights. With φ the classifier's
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
"""

from __future__ import annotations

import torch
from torch import nn

from diffinject.errors import DiffinjectError
from diffinject.models.networks import MLP, ResNet18

# The seed's `--dyn` clamps (train_autoencoder.py): alpha = max(0.1, w), theta = min(0.9, 1 - w).
DYNAMIC_MIN_ALPHA = 0.1
DYNAMIC_MAX_THETA = 0.9
# The seed's define_weight is called with n_classes=2 (CelebA's binary attributes).
SEED_NUM_CLASSES = 2


def features_and_logits(classifier: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
    return features_and_logits(classifier, x)[0]


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
