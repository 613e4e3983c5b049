"""The classifier stages end to end on the prepared Colored-MNIST fixture (2 epochs each), their outputs,
repeatability, the pool of train_debiased, and bad input (one-line errors, no partial outputs)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from diffinject import cli
from diffinject.data.manifest import read_manifest, write_manifest
from diffinject.errors import DiffinjectError
from diffinject.models.checkpoint import save_classifier
from diffinject.models.networks import NetConfig, build_network
from diffinject.stages import evaluate, lff, mine, train_biased, train_debiased, vanilla
from tests.conftest import make_root, null_bias_copy

TINY = {
    "seed": 0,
    "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
    "biased": {"loss": "gce", "epochs": 2, "select": "last"},
    "mine": {"k": 10},
    "vanilla": {"epochs": 2},
    "lff": {"epochs": 2},
    "debiased": {"epochs": 2, "pool": None},
    "evaluate": {"models": ["vanilla", "biased", "lff", "debiased"]},
}
EVAL_KEYS = {"acc", "aligned_acc", "conflict_acc", "worst_group_acc", "dp_gap", "eo_gap"}


def params(**overrides: dict) -> dict:
    out = copy.deepcopy(TINY)
    for name, values in overrides.items():
        out[name] = dict(out.get(name) or {}, **values) if isinstance(values, dict) else values
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prepared_mnist) -> Path:
    """Every classifier stage run once, in order, at TINY params."""
    root = make_root(tmp_path_factory.mktemp("trained"), prepared_mnist)
    p = params()
    for stage in (train_biased, mine, vanilla, lff, train_debiased, evaluate):
        stage.run(p, root)
    return root


@pytest.mark.slow  # shares the `trained` fixture: six stages, ~10 s on 2 CPU cores
def test_training_stages_write_model_folders_and_metrics(trained):
    for name in ("biased", "vanilla", "lff", "debiased"):
        meta = json.loads((trained / "models" / name / "model.json").read_text())
        assert meta["arch"] == "mlp" and meta["num_classes"] == 10 and meta["image_shape"] == [3, 28, 28]
        assert (trained / "models" / name / "model.pt").is_file()
        metrics = json.loads((trained / "metrics" / f"{name}.json").read_text())
        assert metrics["epochs"] == 2 and 1 <= metrics["best_epoch"] <= 2
        assert set(metrics["valid"]) == {"loss", "acc"}
        curve = pd.read_csv(trained / "metrics" / "plots" / "train" / f"{name}.csv")
        assert list(curve["epoch"]) == [1, 2] and {"train_loss", "valid_acc"} <= set(curve.columns)
    assert json.loads((trained / "metrics" / "biased.json").read_text())["best_epoch"] == 2  # select: last
    assert json.loads((trained / "metrics" / "debiased.json").read_text())["n_pool"] == 0
    assert not list(trained.glob("models/.tmp-*")) and not list(trained.glob("metrics/.tmp-*"))


@pytest.mark.slow  # shares the `trained` fixture: six stages, ~10 s on 2 CPU cores
def test_mine_outputs(trained, prepared_mnist):
    mined = pd.read_csv(trained / "data" / "conflicts.csv")
    assert list(mined.columns) == ["id", "target", "loss", "rank"]
    assert len(mined) == 100 and (mined.groupby("target").size() == 10).all()
    assert (mined.groupby("target")["loss"].apply(lambda s: s.is_monotonic_decreasing)).all()
    train = read_manifest(prepared_mnist).query("split == 'train'")
    assert set(mined["id"]) <= set(train["id"])
    report = json.loads((trained / "metrics" / "mine.json").read_text())
    assert report["k"] == 10 and report["n_mined"] == 100 and report["n_true_conflicts"] == 40
    assert report["precision"] == report["n_found"] / 100 and report["recall"] == report["n_found"] / 40
    assert (trained / "metrics" / "plots" / "mine" / "loss_hist.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # shares the `trained` fixture: six stages, ~10 s on 2 CPU cores
def test_evaluate_outputs(trained):
    results = json.loads((trained / "metrics" / "eval.json").read_text())
    assert list(results) == ["vanilla", "biased", "lff", "debiased"]
    for splits in results.values():
        assert list(splits) == ["valid", "test"]
        for values in splits.values():
            assert set(values) == EVAL_KEYS | {"n_groups", "min_group_size"}
            assert all(0.0 <= values[k] <= 1.0 for k in EVAL_KEYS) and values["n_groups"] <= 100
    confusion = sorted(p.name for p in (trained / "metrics" / "plots" / "confusion").iterdir())
    assert confusion == sorted(f"{m}_{s}.csv" for m in results for s in ("valid", "test"))
    rows = pd.read_csv(trained / "metrics" / "plots" / "confusion" / "lff_test.csv")
    assert list(rows.columns) == ["actual", "predicted"] and len(rows) == 500
    assert (rows["actual"] == rows["predicted"]).mean() == pytest.approx(results["lff"]["test"]["acc"])


def test_same_seed_same_metrics_and_weights(tmp_path, prepared_mnist):
    roots = [make_root(tmp_path, prepared_mnist, f"run{i}") for i in range(3)]
    seeds = [0, 0, 1]
    for root, seed in zip(roots, seeds):
        train_biased.run(params(seed=seed), root)
    metrics = [json.loads((r / "metrics" / "biased.json").read_text()) for r in roots]
    weights = [torch.load(r / "models" / "biased" / "model.pt", weights_only=True) for r in roots]
    assert metrics[0] == metrics[1]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not torch.equal(weights[0]["classifier.weight"], weights[2]["classifier.weight"])


def _write_pool(folder: Path, n: int, size: int = 28) -> Path:
    """n PNGs of class 3 coloured like class 0 (bias-conflicting, as a synthetic pool would be) + pool.csv."""
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        img = np.zeros((size, size, 3), dtype=np.uint8)
        img[8:20, 10 + i % 4 : 14 + i % 4] = (251, 80, 43)
        Image.fromarray(img).save(folder / f"s{i}.png")
        rows.append({"id": f"syn-{i}", "path": f"s{i}.png", "target": 3})
    pd.DataFrame(rows).to_csv(folder / "pool.csv", index=False)
    return folder / "pool.csv"


def test_debiased_draws_from_a_pool_with_replacement_when_small(root, capsys):
    _write_pool(root / "pool", 5)
    out = train_debiased.run(params(debiased={"pool": "pool/pool.csv", "bias_conflict_ratio": 0.01}), root)
    assert out["n_pool"] == 40 and out["n_train"] == 4000  # round(0.01 × 4000) from 5 images
    assert "drawn with replacement (the pool has only 5 images)" in capsys.readouterr().out


def test_debiased_draws_without_replacement_when_the_pool_is_large_enough(root, capsys):
    pool = _write_pool(root / "pool", 5)
    out = train_debiased.run(params(debiased={"pool": str(pool), "bias_conflict_ratio": 0.001}), root)
    assert out["n_pool"] == 4
    assert "drawn without replacement from 5 images" in capsys.readouterr().out


def test_debiased_without_pool_says_the_ratio_is_ignored(root, capsys):
    train_debiased.run(params(debiased={"bias_conflict_ratio": 0.3}), root)
    assert "debiased.bias_conflict_ratio=0.3 is ignored" in capsys.readouterr().out


def test_debiased_pool_of_other_image_size(root):
    _write_pool(root / "pool", 2, size=32)
    with pytest.raises(DiffinjectError, match=r"pool.csv: images are \(3, 32, 32\) \(C, H, W\), expected \(3, 28, 28\)"):
        train_debiased.run(params(debiased={"pool": "pool/pool.csv", "bias_conflict_ratio": 0.01}), root)
    assert not (root / "models" / "debiased").exists()


def test_negative_bias_conflict_ratio(root):
    with pytest.raises(DiffinjectError, match=r"params 'debiased.bias_conflict_ratio': got -0.1, expected >= 0"):
        train_debiased.run(params(debiased={"bias_conflict_ratio": -0.1}), root)
    assert not (root / "models").exists() and not (root / "metrics").exists()


def test_empty_split(tmp_path, prepared_mnist):
    prepared = tmp_path / "root" / "data" / "prepared"
    prepared.mkdir(parents=True)
    manifest = read_manifest(prepared_mnist)
    write_manifest(manifest[manifest["split"] != "valid"], prepared)
    os.symlink(prepared_mnist / "train", prepared / "train")
    with pytest.raises(DiffinjectError, match=r"manifest.parquet: split 'valid' has no images \(expected at least one\)"):
        vanilla.run(params(), tmp_path / "root")
    assert not (tmp_path / "root" / "models").exists()


def test_mine_k_larger_than_a_class(root):
    with pytest.raises(DiffinjectError, match=r"params 'mine.k': got 1000, but class \d has only \d+ train samples"):
        mine.run(params(mine={"k": 1000}), root)
    assert not (root / "data" / "conflicts.csv").exists()


def test_mine_without_a_biased_model(root):
    with pytest.raises(DiffinjectError, match=r"models/biased/model.pt: model not found \(run `python -m diffinject train_biased` first\)"):
        mine.run(params(), root)
    assert not (root / "data" / "conflicts.csv").exists() and not (root / "metrics").exists()


def test_evaluate_names_the_missing_model_and_its_stage(root):
    cfg = NetConfig("mlp", 10, (3, 28, 28))
    (root / "models" / "biased").mkdir(parents=True)
    save_classifier(root / "models" / "biased", build_network(cfg), cfg, {})  # untrained is enough here
    with pytest.raises(DiffinjectError, match=r"models/vanilla/model.pt: model not found \(run `python -m diffinject vanilla` first, or drop 'vanilla' from params 'evaluate.models'\)"):
        evaluate.run(params(), root)
    results = evaluate.run(params(evaluate={"models": ["biased"], "splits": ["test"]}), root)
    assert list(results) == ["biased"] and list(results["biased"]) == ["test"]


def _cli(root: Path, stage: str, p: dict, monkeypatch, capsys) -> tuple[int, list[str]]:
    import yaml

    (root / "params.yaml").write_text(yaml.safe_dump(p))
    monkeypatch.chdir(root)
    code = cli.main([stage, "--params", "params.yaml"])
    return code, capsys.readouterr().err.strip().splitlines()


def test_cli_bad_ratio_exits_non_zero_with_one_line(root, monkeypatch, capsys):
    code, err = _cli(root, "train_debiased", params(debiased={"bias_conflict_ratio": -1}), monkeypatch, capsys)
    assert code == 1
    assert err == ["error: params 'debiased.bias_conflict_ratio': got -1.0, expected >= 0 (a fraction of |train|)"]


def test_cli_checkpoint_for_another_number_of_classes(root, monkeypatch, capsys):
    cfg = NetConfig("mlp", 2, (3, 28, 28))
    (root / "models" / "biased").mkdir(parents=True)
    save_classifier(root / "models" / "biased", build_network(cfg), cfg, {})
    code, err = _cli(root, "mine", params(), monkeypatch, capsys)
    assert code == 1 and len(err) == 1
    assert err[0].startswith("error: models/biased: checkpoint has 2 classes, the data has 10")
    assert not (root / "data" / "conflicts.csv").exists()


def test_cli_missing_model(root, monkeypatch, capsys):
    code, err = _cli(root, "evaluate", params(), monkeypatch, capsys)
    assert code == 1 and len(err) == 1 and "models/vanilla/model.pt: model not found" in err[0]


def test_unknown_trainer_key_is_named(root):
    with pytest.raises(DiffinjectError, match=r"params 'trainer.gpus': unknown key"):
        vanilla.run(params(trainer={"gpus": 1}), root)


def test_mine_and_evaluate_without_bias_labels(tmp_path, prepared_mnist):
    """User data without bias labels: mining still chooses, reports no precision/recall; evaluate
    reports accuracy only (no null metrics)."""
    root = tmp_path / "root"
    prepared = null_bias_copy(prepared_mnist, root / "data" / "prepared")
    cfg = NetConfig("mlp", 10, (3, 28, 28))
    (root / "models" / "biased").mkdir(parents=True)
    save_classifier(root / "models" / "biased", build_network(cfg), cfg, {})
    report = mine.run(params(), root)
    assert report == {"k": 10, "n_mined": 100, "n_train": 4000, "n_errors": report["n_errors"]}
    results = evaluate.run(params(evaluate={"models": ["biased"]}), root)
    assert results["biased"]["test"].keys() == {"acc"}
