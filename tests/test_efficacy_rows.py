"""The rows of the efficacy table besides the pipeline's own: the upsample control (copies of the mined
originals), train_debiased with ce and gce, LfF on the synthetic pool (debiased_lff), the ae_debias
baseline's checkpoint, and the every-colour evaluation sets the group metrics are read on."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from diffinject.data.manifest import read_manifest
from diffinject.data.pool import repeat_evenly
from diffinject.data.tensors import ImageTensors
from diffinject.errors import DiffinjectError
from diffinject.models import autoencoder
from diffinject.models.checkpoint import load_classifier, save_classifier
from diffinject.models.lff import LfFModule
from diffinject.models.networks import MLP, NetConfig, build_network
from diffinject.stages import ae_debias, debiased_lff, evaluate, prepare_palette, train_debiased, upsample
from diffinject.stages.mixing import mined_rows, mix

TINY = {
    "seed": 0,
    "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
    "upsample": {"epochs": 2},
    "debiased": {"epochs": 2, "bias_conflict_ratio": 0.05},
    "debiased_lff": {"epochs": 2},
    "ae": {"epochs": 2, "pretrain_epochs": 1, "rec_epochs": 2, "width": 8},
    "palette": {"max_images": 20},
}


def params(**sections: dict) -> dict:
    out = copy.deepcopy(TINY)
    for name, values in sections.items():
        out[name] = dict(out.get(name) or {}, **values)
    return out




def write_conflicts(root: Path, ids: list[int]) -> None:
    pd.DataFrame({"id": ids, "target": 0, "loss": 1.0, "rank": 1}).to_csv(root / "data" / "conflicts.csv", index=False)


def write_pool(root: Path, n: int, target: int = 3) -> str:
    folder = root / "pool"
    folder.mkdir()
    for i in range(n):
        img = np.zeros((28, 28, 3), dtype=np.uint8)
        img[8:20, 10 + i % 4: 14 + i % 4] = (251, 80, 43)
        Image.fromarray(img).save(folder / f"s{i}.png")
    pd.DataFrame({"id": range(n), "path": [f"s{i}.png" for i in range(n)], "target": target}).to_csv(folder / "pool.csv", index=False)
    return "pool/pool.csv"


def images(ids: list[int]) -> ImageTensors:
    n = len(ids)
    return ImageTensors(torch.zeros(n, 3, 4, 4, dtype=torch.uint8), torch.zeros(n, dtype=torch.long),
                        torch.tensor(ids), "test")


def test_repeat_evenly_gives_every_pool_row_its_share():
    draw = repeat_evenly(30, 4000, 0.5, seed=0)
    counts = torch.bincount(draw.rows, minlength=30)
    assert draw.requested == 2000 and len(draw.rows) == 2000
    assert set(counts.tolist()) == {66, 67} and counts.sum() == 2000  # 2000 = 30 x 66 + 20
    assert torch.equal(draw.rows, repeat_evenly(30, 4000, 0.5, seed=0).rows)
    assert not torch.equal(draw.rows, repeat_evenly(30, 4000, 0.5, seed=1).rows)


def test_upsample_adds_only_mined_images_and_the_requested_count(tmp_path, capsys):
    train = images([10, 11, 12, 13, 14, 15, 16, 17, 18, 19])
    conflicts = tmp_path / "conflicts.csv"
    pd.DataFrame({"id": [13, 17], "target": [0, 0]}).to_csv(conflicts, index=False)
    mined = mined_rows(train, conflicts)
    mixed = mix(train, mined, 0.7, seed=0, section="upsample", draw=repeat_evenly)
    assert mixed.n_added == 7 and len(mixed.data) == 17
    added = mixed.data.ids[10:].tolist()
    assert set(added) == {13, 17} and sorted([added.count(13), added.count(17)]) == [3, 4]
    assert mixed.is_original.tolist() == [True] * 10 + [False] * 7
    assert "as 3-4 copies of each of 2 images" in capsys.readouterr().out
    pd.DataFrame({"id": [99], "target": [0]}).to_csv(conflicts, index=False)
    with pytest.raises(DiffinjectError, match="id 99 is not a train image"):
        mined_rows(train, conflicts)


def test_upsample_stage_follows_the_debiased_ratio(root):
    train_ids = read_manifest(root / "data" / "prepared").query("split == 'train'")["id"].tolist()
    write_conflicts(root, train_ids[:3])
    out = upsample.run(params(), root)
    assert (out["n_mined"], out["n_copies"], out["bias_conflict_ratio"]) == (3, 200, 0.05)  # round(0.05 x 4000)
    out = upsample.run(params(debiased={"bias_conflict_ratio": 0.01}), root)
    assert out["n_copies"] == 40
    # the ratio has one home: the old per-stage key says where it went
    with pytest.raises(DiffinjectError, match=r"params 'upsample.bias_conflict_ratio': no longer a key here; .*debiased.bias_conflict_ratio"):
        upsample.run(params(upsample={"bias_conflict_ratio": 0.01}), root)
    assert json.loads((root / "models" / "upsample" / "model.json").read_text())["params"]["loss"] == "ce"


def test_upsample_without_mined_conflicts(root):
    with pytest.raises(DiffinjectError, match=r"conflicts.csv: not found \(run `python -m diffinject mine` first\)"):
        upsample.run(params(), root)


@pytest.mark.parametrize("loss", ["ce", "gce"])
def test_debiased_trains_on_the_mixed_set_with_either_loss(root, loss):
    pool = write_pool(root, 8)
    out = train_debiased.run(params(debiased={"pool": pool, "loss": loss}), root)
    assert (out["n_train"], out["n_pool"]) == (4000, 200)
    meta = json.loads((root / "models" / "debiased" / "model.json").read_text())
    assert meta["params"]["loss"] == loss


def test_gce_and_ce_give_different_debiased_models(root):
    pool = write_pool(root, 8)
    weights = []
    for loss in ("ce", "gce"):
        train_debiased.run(params(debiased={"pool": pool, "loss": loss}), root)
        weights.append(torch.load(root / "models" / "debiased" / "model.pt", weights_only=True))
    assert not torch.equal(weights[0]["classifier.weight"], weights[1]["classifier.weight"])


def test_lff_biased_branch_averages_only_over_its_rows():
    torch.manual_seed(0)
    targets = torch.tensor([0, 1, 0, 1])
    rows = torch.tensor([True, True, False, False])  # the last two rows are synthetic
    module = LfFModule(MLP(4, 2, hidden=3), MLP(4, 2, hidden=3), targets, 2, biased_rows=rows)
    logits = torch.randn(4, 2, requires_grad=True)
    index = torch.arange(4)
    from diffinject.models.losses import gce_loss

    def biased_loss(m, logits, targets, index):
        return m.rows.mean(gce_loss(logits, targets, m.gce_q), index)

    expected = gce_loss(logits[:2], targets[:2], module.gce_q).mean()
    torch.testing.assert_close(biased_loss(module, logits, targets, index), expected)
    biased_loss(module, logits, targets, index).backward()
    assert logits.grad[2:].abs().sum() == 0 and logits.grad[:2].abs().sum() > 0
    # a batch of synthetic rows only: no loss, no gradient for the biased branch
    assert biased_loss(module, logits[2:], targets[2:], index[2:]).item() == 0.0
    everyone = LfFModule(MLP(4, 2, hidden=3), MLP(4, 2, hidden=3), targets, 2)
    torch.testing.assert_close(biased_loss(everyone, logits, targets, index), gce_loss(logits, targets, everyone.gce_q).mean())


@pytest.mark.parametrize("sees, biased_rows", [("original", 4000), ("all", 4200)])
def test_debiased_lff_trains_the_biased_branch_on_the_rows_chosen(root, sees, biased_rows):
    pool = write_pool(root, 8)
    out = debiased_lff.run(params(debiased_lff={"pool": pool, "biased_sees": sees}), root)
    assert (out["n_train"], out["n_pool"], out["biased_rows"]) == (4000, 200, biased_rows)


def test_ae_debias_checkpoint_is_the_frozen_biased_classifier_behind_an_autoencoder(root):
    cfg = NetConfig("mlp", 10, (3, 28, 28))
    torch.manual_seed(0)
    biased = build_network(cfg)
    (root / "models" / "biased").mkdir(parents=True)
    save_classifier(root / "models" / "biased", biased, cfg, {"stage": "biased"})
    ae_debias.run(params(), root)
    net, net_cfg, meta = load_classifier(root / "models" / "ae_debias", num_classes=10, image_shape=(3, 28, 28),
                                          architectures=(autoencoder,))
    assert (net_cfg.front, net_cfg.front_width, meta["params"]["epochs"]) == ("ae", 8, 2)
    state = net.classifier.state_dict()
    assert all(torch.equal(state[k], biased.state_dict()[k]) for k in state)  # the classifier never trained
    x = torch.rand(2, 3, 28, 28)
    torch.testing.assert_close(net(x), net.classifier(net.ae(x)))


def test_palette_sets_hold_every_image_in_every_colour(root):
    prepare_palette.run(params(), root)
    palette = read_manifest(root / "data" / "palette")
    for split in ("valid", "test"):
        rows = palette[palette["split"] == split]
        assert rows["id"].nunique() == 20 and len(rows) == 200
        assert (rows.groupby("id")["bias"].apply(lambda b: sorted(b) == list(range(10)))).all()
        assert (rows["aligned"] == (rows["bias"] == rows["target"])).all()
    prepared = read_manifest(root / "data" / "prepared")
    evaluation = palette[palette["split"].isin(["valid", "test"])]  # train: the unbiased train set, not evaluated
    assert set(evaluation["id"]) <= set(prepared.loc[prepared["split"].isin(["valid", "test"]), "id"])
    # the image coloured c has colour c's hue: its brightest pixel is nearest that palette colour
    from diffinject.data.colour import nearest_palette_colour

    sample = evaluation.iloc[:30]
    pixels = np.stack([np.asarray(Image.open(root / "data" / "palette" / p)) for p in sample["path"]])
    assert (nearest_palette_colour(pixels) == sample["bias"].to_numpy()).all()


def test_palette_is_empty_for_folder_sources_and_when_disabled(root, capsys):
    prepare_palette.run(params(palette={"enabled": False}), root)
    assert len(read_manifest(root / "data" / "palette")) == 0
    assert "params 'palette.enabled' is false" in capsys.readouterr().out


@pytest.mark.slow  # trains two models and builds the palette sets, ~4 s
def test_evaluate_reports_group_metrics_on_the_palette_sets_with_their_group_sizes(root):
    cfg = NetConfig("mlp", 10, (3, 28, 28))
    (root / "models" / "vanilla").mkdir(parents=True)
    save_classifier(root / "models" / "vanilla", build_network(cfg), cfg, {"stage": "vanilla"})
    prepare_palette.run(params(palette={"max_images": 1000}), root)  # all 500 test digits, 50 per class
    results = evaluate.run(dict(params(), evaluate={"models": ["vanilla"]}), root)["vanilla"]
    assert list(results) == ["valid", "test", "valid_palette", "test_palette"]
    assert (results["test_palette"]["n_groups"], results["test_palette"]["min_group_size"]) == (100, 50)
    assert results["test"]["min_group_size"] <= 10  # the prepared test split: ~5 images per group
    assert set(results["test_palette"]) >= {"acc", "worst_group_acc", "dp_gap", "eo_gap"}
