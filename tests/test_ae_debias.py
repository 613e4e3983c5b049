"""Contrastive-autoencoder debiasing: the AE, the classifier's features, the feature loss, the loss
schedule (pre-training, reconstruction cut-off), the seed's dynamic weights, and a frozen classifier."""

import lightning
import pytest
import torch
from torch import nn

from diffinject.data.loaders import ImageDataModule
from diffinject.data.tensors import ImageTensors
from diffinject.errors import DiffinjectError
from diffinject.models.ae_debias import AEClassifier, ConvAutoencoder
from diffinject.models.ae_debias_loss import classifier_features, dynamic_weights, feature_alignment_loss
from diffinject.models.ae_debias_module import AEDebiasModule
from diffinject.models.networks import MLP, ResNet18

MNIST = (3, 28, 28)


def _mlp_module(**kwargs) -> AEDebiasModule:
    torch.manual_seed(0)
    net = AEClassifier(ConvAutoencoder(3, width=8), MLP(3 * 28 * 28, 4, hidden=16))
    return AEDebiasModule(net, **kwargs)


@pytest.mark.parametrize("size", [28, 32, 27])
def test_autoencoder_keeps_shape_and_learns_to_reconstruct(size):
    torch.manual_seed(0)
    ae = ConvAutoencoder(3, width=8)
    x = torch.rand(2, 3, size, size)
    out = ae(x)
    assert out.shape == x.shape
    assert out.std() > 0  # not a constant image
    # the pre-training's job: a few Adam steps on one batch bring the reconstruction error well down
    opt = torch.optim.Adam(ae.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = ((ae(x) - x) ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


def test_classifier_features_mlp_and_resnet():
    x = torch.rand(3, *MNIST)
    mlp = MLP(3 * 28 * 28, 5, hidden=16)
    feat = classifier_features(mlp, x)
    torch.testing.assert_close(feat, mlp.feature(x.flatten(1)))
    torch.testing.assert_close(mlp.classifier(feat), mlp(x))

    resnet = ResNet18(5, 3).eval()
    feat = classifier_features(resnet, x)
    assert feat.shape == (3, 512)
    torch.testing.assert_close(resnet.body.fc(feat), resnet(x))  # everything but fc, normalisation included


def test_classifier_features_unknown_network():
    with pytest.raises(DiffinjectError, match="Linear"):
        classifier_features(nn.Linear(4, 2), torch.rand(2, 4))


def test_ae_classifier_forward_and_keys():
    ae, cls = ConvAutoencoder(3, width=8), MLP(3 * 28 * 28, 4, hidden=16)
    net = AEClassifier(ae, cls)
    x = torch.rand(2, *MNIST)
    torch.testing.assert_close(net(x), cls(ae(x)))
    keys = net.state_dict().keys()
    assert keys and all(k.startswith(("ae.", "classifier.")) for k in keys)
    assert any(k.startswith("ae.") for k in keys) and any(k.startswith("classifier.") for k in keys)


def test_feature_loss_zero_when_outputs_are_originals_and_correct():
    torch.manual_seed(0)
    feat = torch.randn(6, 5)
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    ok = torch.ones(6, dtype=torch.bool)
    assert feature_alignment_loss(feat.clone(), ok, feat, ok, targets).item() == 0.0


def test_feature_loss_value_and_gradients():
    # class 0: originals [0, 0] and [2, 0] are correct -> anchor [1, 0]; output row 2 (class 0) is
    # misclassified at [4, 4]: (1/F)‖[3, 4]‖² = 25 / 2. Class 1: anchor [0, 2]; row 3 misclassified
    # at [0, 0]: 4 / 2. Mean over the two misclassified rows: (12.5 + 2) / 2.
    feat_orig = torch.tensor([[0.0, 0.0], [2.0, 0.0], [9.0, 9.0], [0.0, 2.0]], requires_grad=True)
    feat_out = torch.tensor([[0.0, 0.0], [2.0, 0.0], [4.0, 4.0], [0.0, 0.0]], requires_grad=True)
    targets = torch.tensor([0, 0, 0, 1])
    correct_orig = torch.tensor([True, True, False, True])
    correct_out = torch.tensor([True, True, False, False])
    loss = feature_alignment_loss(feat_out, correct_out, feat_orig, correct_orig, targets)
    assert loss.item() == pytest.approx((12.5 + 2.0) / 2)
    loss.backward()
    assert feat_orig.grad is None  # the anchors are detached
    assert feat_out.grad is not None
    assert feat_out.grad[2].abs().sum() > 0 and feat_out.grad[3].abs().sum() > 0
    assert feat_out.grad[:2].abs().sum() == 0  # correctly classified outputs are left alone


def test_feature_loss_anchor_ignores_wrong_originals():
    # the output sits exactly on the only correct original; a wrong original far away would move the
    # anchor (to [50.5, 50]) if it were used
    feat_orig = torch.tensor([[1.0, 0.0], [100.0, 100.0]])
    feat_out = torch.tensor([[5.0, 5.0], [1.0, 0.0]])
    targets = torch.tensor([0, 0])
    correct_orig = torch.tensor([True, False])
    correct_out = torch.tensor([True, False])
    assert feature_alignment_loss(feat_out, correct_out, feat_orig, correct_orig, targets).item() == 0.0
    # and the same output off the anchor is penalised
    feat_out[1] = torch.tensor([3.0, 0.0])
    assert feature_alignment_loss(feat_out, correct_out, feat_orig, correct_orig, targets).item() == pytest.approx(2.0)


def test_feature_loss_skips_classes_without_anchor():
    # class 1 has no correct original: its misclassified output does not count (and nothing is NaN)
    feat_out = torch.tensor([[0.0, 0.0], [7.0, 7.0]], requires_grad=True)
    loss = feature_alignment_loss(feat_out, torch.tensor([True, False]), torch.zeros(2, 2),
                                  torch.tensor([True, False]), torch.tensor([0, 1]))
    assert loss.item() == 0.0
    assert loss.requires_grad  # still back-propagates, so a total loss made only of it can step


def test_dynamic_weights_formula():
    # K = 2: w = 1 − (acc − 0.5) / 0.5
    assert dynamic_weights(0.75, num_classes=2) == pytest.approx((0.5, 0.5))
    assert dynamic_weights(1.0, num_classes=2) == pytest.approx((0.1, 0.9))  # w = 0: α clamped to 0.1
    assert dynamic_weights(0.5, num_classes=2) == pytest.approx((1.0, 0.0))
    # K = 10: acc 0.55 -> (0.55 − 0.1) / 0.9 = 0.5
    assert dynamic_weights(0.55, num_classes=10) == pytest.approx((0.5, 0.5))
    assert dynamic_weights(0.82, num_classes=10) == pytest.approx((0.2, 0.8))


def test_loss_schedule_pretrain_then_rec_then_none():
    module = _mlp_module(alpha=0.7, theta=0.3, rec_weight=0.5, pretrain_epochs=1, rec_epochs=3)
    torch.manual_seed(1)
    x, targets = torch.rand(8, *MNIST), torch.randint(0, 4, (8,))

    pre = module.loss_terms(x, targets, epoch=0)
    assert pre["loss"].item() == pytest.approx(pre["rec"].item())
    assert pre["rec"].item() > 0

    with_rec = module.loss_terms(x, targets, epoch=2)  # 1 <= epoch < rec_epochs
    expected = 0.7 * with_rec["ce"] + 0.3 * with_rec["feat"] + 0.5 * with_rec["rec"]
    assert with_rec["loss"].item() == pytest.approx(expected.item())
    torch.testing.assert_close(with_rec["logits"], module.net(x))  # the logits are cls(AE(x))

    no_rec = module.loss_terms(x, targets, epoch=3)  # rec_epochs counts from the start of training
    assert no_rec["loss"].item() == pytest.approx((0.7 * no_rec["ce"] + 0.3 * no_rec["feat"]).item())
    assert no_rec["loss"].item() != pytest.approx((no_rec["loss"] + 0.5 * no_rec["rec"]).item())
    assert module.loss_weights(3) == {"ce": 0.7, "feat": 0.3, "rec": 0.0}


def test_dynamic_update_uses_batch_accuracy():
    module = _mlp_module(dynamic=True)
    logits = torch.tensor([[2.0, 0, 0, 0]] * 4)  # predicts class 0 everywhere
    module.update_dynamic_weights(logits, torch.tensor([0, 0, 0, 1]))  # accuracy 0.75, K = 4
    assert (module.alpha_now, module.theta_now) == pytest.approx(dynamic_weights(0.75, num_classes=4))
    assert module.loss_weights(module.pretrain_epochs)["feat"] == pytest.approx(module.theta_now)


def test_bad_weight_is_refused():
    with pytest.raises(DiffinjectError, match="theta -1"):
        _mlp_module(theta=-1)


def _random_images(n: int, size: int, num_classes: int, seed: int) -> ImageTensors:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    targets = torch.randint(0, num_classes, (n,), generator=g)
    return ImageTensors(images, targets, torch.arange(n), "random")


def test_fit_trains_only_the_ae_and_keeps_batchnorm_frozen():
    torch.manual_seed(0)
    cls = ResNet18(2, 3)
    net = AEClassifier(ConvAutoencoder(3, width=4), cls)
    module = AEDebiasModule(net, pretrain_epochs=1, rec_epochs=2, dynamic=True, lr=1e-2)
    cls_before = {k: v.clone() for k, v in cls.state_dict().items()}  # BN running stats included
    ae_before = {k: v.clone() for k, v in net.ae.state_dict().items()}
    data = ImageDataModule(_random_images(8, 32, 2, 0), _random_images(4, 32, 2, 1), batch_size=4, seed=0)
    trainer = lightning.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data)

    for k, v in cls.state_dict().items():
        assert torch.equal(v, cls_before[k]), k
    assert not cls.training and not any(m.training for m in cls.modules())
    assert all(not p.requires_grad for p in cls.parameters())
    assert any(not torch.equal(v, ae_before[k]) for k, v in net.ae.state_dict().items())
    metrics = module.epoch_metrics
    assert {"train/loss", "train/acc", "train/rec", "train/feat", "valid/acc"} <= metrics.keys()
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in net.ae.parameters()}
