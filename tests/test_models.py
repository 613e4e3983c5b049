"""Networks, checkpoints (weights_only, mismatches), LfF's weights, and a determinism check."""

import json

import pytest
import torch
import torchvision

from diffinject.errors import DiffinjectError
from diffinject.models import autoencoder, disent_net
from diffinject.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_classifier, save_classifier
from diffinject.models.lff import LossEMA
from diffinject.models.networks import MLP, NetConfig, ResNet18, build_network, load_imagenet_weights

MNIST = (3, 28, 28)


def test_mlp_is_lff_architecture():
    net = build_network(NetConfig("mlp", 10, MNIST))
    assert isinstance(net, MLP)
    # 2352·100+100, 2 × (100·100+100), 100·10+10
    assert sum(p.numel() for p in net.parameters()) == 235_300 + 2 * 10_100 + 1_010
    assert net(torch.rand(4, *MNIST)).shape == (4, 10)


def test_resnet18_head_and_small_images():
    net = build_network(NetConfig("resnet18", 7, MNIST))
    assert isinstance(net, ResNet18) and net.body.fc.out_features == 7
    net.eval()
    assert net(torch.rand(2, *MNIST)).shape == (2, 7)


def test_unknown_architecture():
    with pytest.raises(DiffinjectError, match="model architecture 'vit': expected one of mlp, resnet18"):
        build_network(NetConfig("vit", 10, MNIST))


def test_checkpoint_round_trip(tmp_path):
    cfg = NetConfig("mlp", 10, MNIST)
    net = build_network(cfg)
    save_classifier(tmp_path, net, cfg, {"stage": "test"})
    loaded, loaded_cfg, meta = load_classifier(tmp_path, num_classes=10, image_shape=MNIST, arch="mlp")
    x = torch.rand(3, *MNIST)
    torch.testing.assert_close(loaded(x), net(x))
    assert loaded_cfg == cfg and meta["stage"] == "test"


def test_missing_model_names_the_file_and_the_stage(tmp_path):
    with pytest.raises(DiffinjectError, match=r"models/biased/model.pt: model not found \(run `python -m diffinject train_biased` first\)"):
        load_classifier(tmp_path / "models" / "biased", missing_hint="run `python -m diffinject train_biased` first")


def test_checkpoint_for_another_number_of_classes(tmp_path):
    cfg = NetConfig("mlp", 10, MNIST)
    save_classifier(tmp_path, build_network(cfg), cfg, {})
    with pytest.raises(DiffinjectError, match="checkpoint has 10 classes, the data has 2"):
        load_classifier(tmp_path, num_classes=2)


def test_checkpoint_for_another_architecture(tmp_path):
    cfg = NetConfig("mlp", 10, MNIST)
    save_classifier(tmp_path, build_network(cfg), cfg, {})
    with pytest.raises(DiffinjectError, match="checkpoint is a mlp, expected a resnet18"):
        load_classifier(tmp_path, arch="resnet18")


def test_weights_of_another_architecture_than_model_json_says(tmp_path):
    resnet = NetConfig("resnet18", 10, MNIST)
    save_classifier(tmp_path, build_network(resnet), resnet, {})
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps(dict(meta, arch="mlp")))
    with pytest.raises(DiffinjectError, match=r"model.pt: weights do not fit a mlp with 10 classes") as err:
        load_classifier(tmp_path)
    assert "\n" not in str(err.value)


def test_checkpoint_for_other_image_size(tmp_path):
    cfg = NetConfig("mlp", 10, (3, 32, 32))
    save_classifier(tmp_path, build_network(cfg), cfg, {})
    with pytest.raises(DiffinjectError, match=r"takes images of shape \(3, 32, 32\)"):
        load_classifier(tmp_path, image_shape=MNIST)


class NotATensor:
    pass


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    cfg = NetConfig("mlp", 10, MNIST)
    save_classifier(tmp_path, build_network(cfg), cfg, {})
    torch.save({"w": torch.zeros(1), "payload": NotATensor()}, tmp_path / WEIGHTS_NAME)
    with pytest.raises(DiffinjectError, match=r"not a loadable weights-only state_dict") as err:
        load_classifier(tmp_path)
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)


@pytest.mark.parametrize("module", [autoencoder, disent_net], ids=["ae front", "disent composite"])
def test_a_built_around_network_rebuilds_from_its_module_only(tmp_path, module):
    """cls ∘ AE and DisEnt come back from the module the caller passes; without it the loader names
    the network in one line (a stage that did not import it would not re-run when it changes)."""
    plain = NetConfig("mlp", 10, MNIST)
    if module is autoencoder:
        cfg, info = NetConfig("mlp", 10, MNIST, front="ae", front_width=8), {}
    else:
        cfg, info = plain, {"composite": disent_net.COMPOSITE}
    net = module.build(cfg)
    save_classifier(tmp_path, net, cfg, info)
    loaded, _, _ = load_classifier(tmp_path, architectures=(autoencoder, disent_net))
    assert type(loaded) is type(net)
    x = torch.rand(2, *MNIST)
    torch.testing.assert_close(loaded(x), net.eval()(x))
    with pytest.raises(DiffinjectError, match=rf"a '{module.ARCHITECTURE}' network, which this stage does not load") as err:
        load_classifier(tmp_path)
    assert "\n" not in str(err.value)


def test_imagenet_weights_from_a_local_file(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)  # ImageNet-shaped, 1000 classes
    net = build_network(NetConfig("resnet18", 10, MNIST))
    load_imagenet_weights(net, path, "biased.pretrained")
    reference = torch.load(path, weights_only=True)
    torch.testing.assert_close(net.body.conv1.weight, reference["conv1.weight"])
    assert net.body.fc.out_features == 10
    with pytest.raises(DiffinjectError, match=r"params 'biased.pretrained': .*nope.pth not found"):
        load_imagenet_weights(net, tmp_path / "nope.pth", "biased.pretrained")
    with pytest.raises(DiffinjectError, match="pretrained weights are for resnet18 only"):
        load_imagenet_weights(build_network(NetConfig("mlp", 10, MNIST)), path, "biased.pretrained")


def test_lff_loss_ema_and_class_max():
    ema = LossEMA(torch.tensor([0, 0, 1]), num_classes=2, alpha=0.7)
    ema.update(torch.tensor([1.0, 2.0]), torch.tensor([0, 2]))  # first update stores the loss itself
    torch.testing.assert_close(ema.value, torch.tensor([1.0, 0.0, 2.0]))
    ema.update(torch.tensor([0.0, 4.0]), torch.tensor([0, 1]))  # 0.7·1 + 0.3·0 ; first update of #1 -> 4
    torch.testing.assert_close(ema.value, torch.tensor([0.7, 4.0, 2.0]))
    torch.testing.assert_close(ema.class_max(), torch.tensor([4.0, 2.0]))
    torch.testing.assert_close(ema.normalised(torch.tensor([0, 2]), torch.tensor([0, 1])), torch.tensor([0.7 / 4.0, 1.0]))


def test_predict_with_the_default_trainer_params():
    # the default trainer.* enables the progress bar; inference must not add one to a bar-less Trainer
    from diffinject.data.tensors import ImageTensors
    from diffinject.models.trainer import TrainerConfig
    from diffinject.models.training import predict_logits

    net = build_network(NetConfig("mlp", 10, MNIST)).eval()
    images = torch.randint(0, 256, (5, *MNIST), dtype=torch.uint8)
    data = ImageTensors(images, torch.zeros(5, dtype=torch.long), torch.arange(5), "test")
    logits = predict_logits(net, data, 2, TrainerConfig())
    torch.testing.assert_close(logits, net(images.float() / 255))


def _tiny_split(n: int, seed: int):
    from diffinject.data.tensors import ImageTensors

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=g)
    return ImageTensors(images, torch.randint(0, 3, (n,), generator=g), torch.arange(n), f"split{seed}")


def test_epoch_selector_keeps_the_first_best_epoch_or_the_last():
    from diffinject.models.classifier import EpochSelector

    net = torch.nn.Linear(2, 1)
    scores = [0.3, 0.5, 0.5, 0.4]
    best, last = EpochSelector("best"), EpochSelector("last")
    for epoch, score in enumerate(scores, start=1):
        with torch.no_grad():
            net.weight.fill_(epoch)
        for selector in (best, last):
            selector.record(epoch, {"valid/acc": score, "train/loss": 1.0 / epoch}, net)
    assert best.best_epoch == 2 and best.best_score == 0.5  # the first of the tied epochs
    assert torch.all(best.state["weight"] == 2)  # a copy: later epochs did not change it
    assert last.best_epoch == 4 and torch.all(last.state["weight"] == 4)
    assert [row["epoch"] for row in best.history] == [1, 2, 3, 4] and best.history[1]["valid/acc"] == 0.5
    with pytest.raises(RuntimeError, match="valid/acc was never computed"):
        EpochSelector("best").record(1, {"train/loss": 1.0}, net)


def test_training_returns_the_weights_of_the_best_validation_epoch():
    from diffinject.models.configs import TrainConfig
    from diffinject.models.trainer import TrainerConfig
    from diffinject.models.training import train_classifier

    train, valid = _tiny_split(64, 0), _tiny_split(32, 1)
    cfg = TrainConfig(epochs=4, batch_size=16, lr=0.05, select="best")
    result = train_classifier(train, valid, 3, cfg, TrainerConfig(enable_progress_bar=False), 0, "biased")
    accs = [row["valid/acc"] for row in result.history]
    assert len(accs) == 4 and result.best_epoch == accs.index(max(accs)) + 1
    net = build_network(result.net_config)
    net.load_state_dict(result.state)
    with torch.no_grad():
        acc = (net(valid.images.float() / 255).argmax(1) == valid.targets).float().mean().item()
    assert acc == pytest.approx(max(accs))  # the kept weights are that epoch's


@pytest.mark.parametrize("min_interval_s, draws_per_epoch", [(float("inf"), 3), (0.0, 1 + 4 + 1)])
def test_training_progress_bar_draws_once_per_event(monkeypatch, min_interval_s, draws_per_epoch):
    # 4 batches per epoch and refresh_rate 1. With no minimum time between redraws the bar draws at the
    # epoch's start, after each batch and at its end (with valid/acc); with an interval longer than the
    # epoch, only at the start, the last batch and the end. Plus one draw when the bar is created.
    import lightning
    from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

    from diffinject.data.loaders import ImageDataModule
    from diffinject.models.classifier import ClassifierModule
    from diffinject.progress import TrainProgressBar

    draws: list[tuple[int, str]] = []  # (batches shown, postfix) at every draw
    original_refresh = Tqdm.refresh

    def counting_refresh(bar, *args, **kwargs):
        draws.append((bar.n, bar.postfix or ""))
        return original_refresh(bar, *args, **kwargs)

    monkeypatch.setattr(Tqdm, "refresh", counting_refresh)
    bar = TrainProgressBar(refresh_rate=1, min_interval_s=min_interval_s)
    trainer = lightning.Trainer(max_epochs=2, callbacks=[bar], logger=False, enable_checkpointing=False,
                                enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")
    module = ClassifierModule(build_network(NetConfig("mlp", 3, (1, 4, 4))))
    trainer.fit(module, datamodule=ImageDataModule(_tiny_split(64, 0), _tiny_split(16, 1), 16, 0))
    assert len(draws) == 1 + 2 * draws_per_epoch, draws
    assert draws[-1][0] == 4 and "valid/acc=" in draws[-1][1]  # the epoch's end: full bar and valid/acc
