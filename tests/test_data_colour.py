"""LfF colouring and skew: golden properties of the protocol."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diffinject.data.colour import LFF_PALETTE, assign_bias_labels, colorize
from diffinject.data.manifest import read_manifest
from diffinject.data.prepare import DataConfig, SplitFractions, prepare, stratified_split


def test_colorize_foreground_coloured_background_zero():
    gray = np.zeros((3, 8, 8), np.uint8)
    gray[:, 2:6, 2:6] = 255
    gray[:, 3, 3] = 128
    bias = np.array([0, 4, 9])
    rgb = colorize(gray, bias, color_std=0.0, rng=np.random.default_rng(0))
    assert rgb.shape == (3, 8, 8, 3) and rgb.dtype == np.uint8
    assert (rgb[gray == 0] == 0).all()
    for k, b in enumerate(bias):
        np.testing.assert_allclose(rgb[k, 2, 2] / 255, LFF_PALETTE[b], atol=1 / 255)
        np.testing.assert_allclose(rgb[k, 3, 3], np.rint(128 * LFF_PALETTE[b]), atol=1)


def test_colorize_noise_has_configured_std():
    gray = np.full((4000, 1, 1), 255, np.uint8)
    rgb = colorize(gray, np.zeros(4000, int), color_std=0.02, rng=np.random.default_rng(1))
    colour = rgb[:, 0, 0, :] / 255
    np.testing.assert_allclose(colour.mean(0), LFF_PALETTE[0], atol=0.003)
    # std of the noise, blurred a little by 8-bit rounding (uniform error of 1/255 has std 0.0011)
    np.testing.assert_allclose(colour.std(0)[1:], 0.02, atol=0.002)


def test_assign_bias_labels_matches_lff_counts():
    targets = np.repeat(np.arange(10), 400)
    bias = assign_bias_labels(targets, aligned_ratio=0.99, n_bias=10)
    conflicts = bias != targets
    assert conflicts.sum() == 40  # 1 % of 4000, exactly: LfF rounds cumulative milestones
    for label in range(10):
        others = np.bincount(bias[(targets == label) & conflicts], minlength=10)
        assert others[label] == 0
        assert others.max() - np.delete(others, label).min() <= 1  # spread evenly over other colours


def test_assign_bias_labels_unbiased_is_uniform():
    targets = np.repeat(np.arange(10), 50)
    bias = assign_bias_labels(targets, aligned_ratio=0.1, n_bias=10)
    for label in range(10):
        assert (np.bincount(bias[targets == label], minlength=10) == 5).all()


def test_stratified_split_sizes():
    targets = np.repeat(np.arange(10), 500)
    splits = stratified_split(targets, SplitFractions(0.8, 0.1, 0.1), np.random.default_rng(0))
    table = pd.crosstab(targets, splits)
    assert (table["train"] == 400).all() and (table["valid"] == 50).all() and (table["test"] == 50).all()


def test_prepared_mnist_sizes_and_colours(prepared_mnist):
    m = read_manifest(prepared_mnist)
    assert m["split"].value_counts().to_dict() == {"train": 4000, "valid": 500, "test": 500}
    assert (pd.crosstab(m["target"], m["split"])["train"] == 400).all()
    assert m["id"].is_unique
    # colour means match the palette (averaged over the images of each bias colour)
    sample = m.groupby("bias").head(20)
    for bias, rows in sample.groupby("bias"):
        colours = []
        for rel in rows["path"]:
            rgb = np.asarray(Image.open(prepared_mnist / rel)).astype(float)
            brightest = rgb.reshape(-1, 3)[np.argsort(rgb.sum(2).ravel())[-10:]]
            colours.append(brightest.mean(0) / 255)
            assert (rgb.sum(2) == 0).mean() > 0.5  # black background dominates an MNIST digit
        np.testing.assert_allclose(np.mean(colours, 0), LFF_PALETTE[bias], atol=0.03)


@pytest.mark.slow  # four full prepares, ~2 s each
@pytest.mark.parametrize("pct", [0.5, 1.0, 2.0, 5.0])
def test_train_skew_matches_conflict_pct(tmp_path, pct):
    out = tmp_path / "p"
    out.mkdir()
    prepare(DataConfig(conflict_pct=pct), seed=3, out=out)
    m = read_manifest(out)
    train = m[m["split"] == "train"]
    assert abs((~train["aligned"]).mean() - pct / 100) <= 10 / len(train)  # at most one off per class
    for split in ("valid", "test"):
        part = m[m["split"] == split]
        assert (~part["aligned"]).mean() == pytest.approx(0.9)
    # names follow the DisEnt layout and agree with the columns
    row = train[~train["aligned"]].iloc[0]
    assert row["path"] == f"train/conflict/{row['target']}/{row['id']}_{row['target']}_{row['bias']}.png"


@pytest.mark.slow  # three full prepares
def test_same_seed_same_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    prepare(DataConfig(), seed=7, out=a)
    prepare(DataConfig(), seed=7, out=b)
    ma, mb = read_manifest(a), read_manifest(b)
    pd.testing.assert_frame_equal(ma, mb)
    for rel in ma["path"].iloc[::500]:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
