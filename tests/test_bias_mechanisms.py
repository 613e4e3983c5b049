"""`data.bias`: the three ways a grey source carries its bias (stroke colour, background colour, image
corruption). Each keeps the LfF skew (exact train conflicts, unbiased valid/test), can be told apart
from pixels, and reaches the every-bias sets and the unbiased train set of prepare_palette."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffinject.data.bias import MECHANISMS, N_BIAS_VALUES, nearest_background_colour, render
from diffinject.data.colour import colorize
from diffinject.data.corruption import CORRUPTION_NAMES
from diffinject.data.manifest import read_manifest
from diffinject.data.palette import SEED_OFFSET
from diffinject.data.prepare import DataConfig
from diffinject.data.sources import load_mnist5k
from diffinject.data.validation import ValidateConfig, validate_prepared
from diffinject.errors import DiffinjectError
from diffinject.stages import prepare, prepare_palette
from tests.conftest import make_root

PALETTE_IMAGES = 20  # per eval split: enough for the every-bias layout, cheap to write


@pytest.fixture(scope="module")
def grey():
    return load_mnist5k()


@pytest.fixture(scope="module", params=MECHANISMS)
def built(request, tmp_path_factory) -> tuple[str, Path, dict]:
    """(mechanism, repository root, prepare's info) after prepare and prepare_palette at that mechanism."""
    mechanism = request.param
    root = tmp_path_factory.mktemp(f"bias_{mechanism}")
    params = {"seed": 0, "data": {"bias": mechanism}, "palette": {"max_images": PALETTE_IMAGES}}
    info = prepare.run(params, root)
    prepare_palette.run(params, root)
    return mechanism, root, info


def test_prepare_keeps_exact_skew_and_names_the_mechanism(built):
    mechanism, root, info = built
    m = read_manifest(root / "data" / "prepared")
    train = m[m["split"] == "train"]
    assert len(train) == 4000 and (~train["aligned"]).sum() == 40  # 1 % of 400 per class, exactly
    for split in ("valid", "test"):
        part = m[m["split"] == split]
        assert (part.groupby(["target", "bias"]).size() == 5).all()  # every bias 5x per class: unbiased
    written = json.loads((root / "data" / "prepared" / "info.json").read_text())
    assert written["bias"] == info["bias"] == mechanism and written["params"]["bias"] == mechanism
    sample = np.asarray(Image.open(root / "data" / "prepared" / train["path"].iloc[0]))
    assert sample.shape == (28, 28, 3)


def test_colour_is_colorize_byte_for_byte(grey):
    bias = np.random.default_rng(0).integers(0, 10, 300)
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(render(grey.images[:300], bias, "colour", 0.005, rng_a),
                                  colorize(grey.images[:300], bias, 0.005, rng_b))
    assert rng_a.random() == rng_b.random()  # the same draws: what follows in prepare is unchanged too


def test_background_is_read_back_from_pixels(grey, built):
    bias = np.random.default_rng(1).integers(0, 10, 2000)
    rgb = render(grey.images[:2000], bias, "background", 0.005, np.random.default_rng(2))
    assert (nearest_background_colour(rgb) == bias).mean() >= 0.99
    # the stroke is white: the brightest pixel of a digit is (near) 255 in every channel
    assert (rgb.reshape(2000, -1, 3).max(1) >= 250).all()
    mechanism, root, _ = built
    if mechanism == "background":  # and on disk, as prepare wrote it
        m = read_manifest(root / "data" / "prepared").groupby("bias").head(10)
        pixels = np.stack([np.asarray(Image.open(root / "data" / "prepared" / p)) for p in m["path"]])
        assert (nearest_background_colour(pixels) == m["bias"].to_numpy()).all()


def _features(images: np.ndarray) -> np.ndarray:
    """A few hand features of grey images (N, H, W) uint8: background level and spread, saturated
    pixels, gradients by direction, flat runs (pixelation), isolated dots (impulse noise), mid-tones."""
    x = images.astype(np.float64) / 255
    n = len(x)
    flat = np.sort(x.reshape(n, -1), axis=1)
    dark = flat[:, : flat.shape[1] // 2]
    dx, dy = np.abs(np.diff(x, axis=2)).mean((1, 2)), np.abs(np.diff(x, axis=1)).mean((1, 2))
    centre = x[:, 1:-1, 1:-1]
    neighbours = (x[:, :-2, 1:-1] + x[:, 2:, 1:-1] + x[:, 1:-1, :-2] + x[:, 1:-1, 2:]) / 4
    return np.stack([
        dark.mean(1), dark.std(1), (x == 0).mean((1, 2)), (x == 1).mean((1, 2)), flat[:, -1], x.mean((1, 2)),
        dx, dy, dy / (dx + 1e-6), ((x[:, :, 1:] == x[:, :, :-1]) & (x[:, :, 1:] > 0.05)).mean((1, 2)),
        np.abs(4 * centre - 4 * neighbours).mean((1, 2)),
        ((centre > 0.9) & (neighbours < 0.3)).mean((1, 2)), ((centre < 0.1) & (neighbours > 0.5)).mean((1, 2)),
        ((x > 0.02) & (x < 0.98)).mean((1, 2)), flat[:, int(0.9 * flat.shape[1])], flat[:, int(0.99 * flat.shape[1])],
    ], 1)


def test_corruptions_are_grey_deterministic_and_separable(grey):
    assert len(CORRUPTION_NAMES) == N_BIAS_VALUES == len(set(CORRUPTION_NAMES))
    rows = np.random.default_rng(3).permutation(len(grey.images))[:2000]
    bias = np.random.default_rng(4).integers(0, 10, 2000)
    rgb = render(grey.images[rows], bias, "corruption", 0.005, np.random.default_rng(5))
    assert rgb.shape == (2000, 28, 28, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    again = render(grey.images[rows], bias, "corruption", 0.005, np.random.default_rng(5))
    np.testing.assert_array_equal(again, rgb)
    # the digit survives: the corrupted image still correlates with the clean one
    clean = grey.images[rows].reshape(2000, -1).astype(float)
    noisy = rgb[..., 0].reshape(2000, -1).astype(float)
    corr = [np.corrcoef(clean[k], noisy[k])[0, 1] for k in range(2000)]
    assert min(np.median(np.array(corr)[bias == v]) for v in range(10)) > 0.5
    # ten different corruptions: a nearest-centroid classifier on hand features tells them apart
    z = _features(rgb[..., 0])
    train, test = slice(0, 1000), slice(1000, 2000)
    z = (z - z[train].mean(0)) / (z[train].std(0) + 1e-9)
    centroids = np.stack([z[train][bias[train] == v].mean(0) for v in range(10)])
    pred = np.linalg.norm(z[test][:, None] - centroids[None], axis=2).argmin(1)
    assert (pred == bias[test]).mean() >= 0.85  # chance is 0.1


def test_palette_holds_every_bias_for_eval_and_an_unbiased_train_set(built):
    mechanism, root, _ = built
    palette = read_manifest(root / "data" / "palette")
    prepared = read_manifest(root / "data" / "prepared")
    for split in ("valid", "test"):
        rows = palette[palette["split"] == split]
        assert rows["id"].nunique() == PALETTE_IMAGES and len(rows) == PALETTE_IMAGES * 10
        assert (rows.groupby("id")["bias"].apply(lambda b: sorted(b) == list(range(10)))).all()
        assert set(rows["id"]) <= set(prepared.loc[prepared["split"] == split, "id"])
    train = palette[palette["split"] == "train"]
    assert sorted(train["id"]) == sorted(prepared.loc[prepared["split"] == "train", "id"])  # each once
    counts = np.bincount(train["bias"], minlength=10)
    assert counts.min() >= 330 and counts.max() <= 470  # uniform: 400 ± 3.5 σ
    assert abs((train["aligned"]).mean() - 0.1) < 0.02  # the prepared skew (99 % aligned) is gone
    assert (palette["aligned"] == (palette["bias"] == palette["target"])).all()
    joined = train.merge(prepared[["id", "target"]], on="id", suffixes=("", "_prepared"))
    assert (joined["target"] == joined["target_prepared"]).all()
    first = np.asarray(Image.open(root / "data" / "palette" / train["path"].iloc[0]))
    assert first.shape == (28, 28, 3)


def test_palette_of_the_default_colour_data_is_unchanged_for_eval(tmp_path, prepared_mnist):
    """valid/test draw from the rng before the train set does: adding it moved no evaluation image."""
    root = make_root(tmp_path, prepared_mnist)
    prepare_palette.run({"seed": 0, "palette": {"max_images": PALETTE_IMAGES}}, root)
    palette = read_manifest(root / "data" / "palette")
    grey = load_mnist5k()
    rng = np.random.default_rng(0 + SEED_OFFSET)
    prepared = read_manifest(prepared_mnist)
    valid_ids = prepared.loc[prepared["split"] == "valid", "id"].to_numpy(dtype=np.int64)
    ids = np.sort(rng.permutation(valid_ids)[:PALETTE_IMAGES])  # mnist5k ids are rows of the source
    expected = colorize(np.repeat(grey.images[ids], 10, axis=0), np.tile(np.arange(10), len(ids)), 0.005, rng)
    rows = palette[palette["split"] == "valid"]
    got = np.stack([np.asarray(Image.open(root / "data" / "palette" / p)) for p in rows["path"]])
    order = np.lexsort((rows["bias"].to_numpy(), rows["id"].to_numpy()))
    np.testing.assert_array_equal(got[order], expected)


@pytest.mark.slow  # three great-expectations runs, ~3 s each
def test_validation_reads_the_bias_back_where_it_can(built, prepared_mnist):
    mechanism, root, _ = built
    prepared = root / "data" / "prepared"
    report = validate_prepared(prepared, read_manifest(prepared), 10, 1.0, ValidateConfig(), mechanism=mechanism)
    out = report.to_json()
    assert report.success, out["failures"]
    assert out["bias_mechanism"] == mechanism
    if mechanism == "corruption":
        assert out["bias_from_pixels"]["checked"] is False and "corruption" in out["bias_from_pixels"]["why"]
        assert "bias_matches_pixels" not in out["checks"]
    else:
        assert out["bias_from_pixels"] == {"checked": True, "agreement": 1.0}
    if mechanism == "colour":  # colour data declared as background: the labels do not match the pixels
        wrong = validate_prepared(prepared, read_manifest(prepared), 10, 1.0, ValidateConfig(), mechanism="background")
        assert [c.name for c in wrong.failed] == ["bias_matches_pixels"]


def test_the_params_type_lists_the_mechanisms():
    assert typing.get_args(typing.get_type_hints(DataConfig)["bias"]) == MECHANISMS


@pytest.mark.parametrize("where", ["config", "stage"])
def test_an_unknown_bias_is_a_one_line_error_naming_the_key(where, tmp_path):
    with pytest.raises(DiffinjectError) as err:
        if where == "config":
            DataConfig(bias="texture").check()
        else:
            prepare.run({"data": {"bias": "texture"}}, tmp_path)
    message = str(err.value)
    assert "params 'data.bias'" in message and "texture" in message and "\n" not in message
    assert all(m in message for m in MECHANISMS)
    assert not (tmp_path / "p").exists()


def test_a_folder_source_names_its_own_bias(tmp_path):
    """Folder sources ignore data.bias: info.json says `folder`."""
    src = tmp_path / "release"
    for split in ("train", "valid", "test"):
        for k in range(4):
            (src / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((28, 28, 3), 40 * k, np.uint8)).save(src / split / f"{k}_{k % 2}_{k % 2}.png")
    params = {"data": {"source": "folder", "path": str(src), "bias": "corruption"}}
    info = prepare.run(params, tmp_path)
    assert info["bias"] == "folder"
    assert json.loads((tmp_path / "data" / "prepared" / "info.json").read_text())["bias"] == "folder"
