"""The evaluation-only judges of the pool's quality report: trained without the shortcut, they measure a
pool's label fidelity and bias conflicts for a mechanism no pixel rule reads (corruption)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from diffinject.data.manifest import read_manifest
from diffinject.data.tensors import load_split
from diffinject.models.trainer import TrainerConfig
from diffinject.stages import pool_quality, prepare, prepare_palette, train_judge

JUDGE = {"epochs": 4, "batch_size": 128}


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory):
    """A root after prepare, prepare_palette and train_judge on mnist5k with `data.bias: corruption`."""
    root = tmp_path_factory.mktemp("judges")
    params = {"seed": 0, "data": {"bias": "corruption"}, "palette": {"max_images": 20}, "judge": JUDGE,
              "trainer": {"accelerator": "cpu", "enable_progress_bar": False}}
    prepare.run(params, root)
    prepare_palette.run(params, root)
    train_judge.run(params, root)
    return root


@pytest.mark.slow  # two 4-epoch trainings on 4,000 images (~15 s)
def test_judges_train_on_the_unbiased_set_and_read_the_corruption(corrupted):
    judge = json.loads((corrupted / "metrics" / "judge.json").read_text())
    bias = json.loads((corrupted / "metrics" / "bias_judge.json").read_text())
    assert judge["trained_on"] == bias["trained_on"] == "the unbiased train set of data/palette"
    # valid is unbiased: a label judge that had learned the train split's shortcut would score near 0.1
    # there, and a bias judge that had learned the digit likewise (chance 0.1 for both)
    assert judge["valid"]["acc"] > 0.8 and bias["valid"]["acc"] > 0.5
    assert json.loads((corrupted / "models" / "judge" / "model.json").read_text())["view"] == "rgb"


@pytest.mark.slow
def test_the_quality_report_counts_bias_conflicts_of_any_mechanism(corrupted):
    """Real valid images as a planted pool: the aligned ones are no conflicts, the others are."""
    manifest = read_manifest(corrupted / "data" / "prepared")
    valid = manifest[manifest["split"] == "valid"].reset_index(drop=True)
    images = load_split(corrupted / "data" / "prepared", "valid", manifest).images
    reports = {}
    for name, rows in (("aligned", valid.index[valid["aligned"]]), ("conflicting", valid.index[~valid["aligned"]][:200])):
        pool = pd.DataFrame({"id": np.arange(len(rows)), "target": valid.loc[rows, "target"].to_numpy(),
                             "content_target": valid.loc[rows, "target"].to_numpy(),
                             "style_target": valid.loc[rows, "bias"].to_numpy(), "label_from": "content"})
        reports[name] = pool_quality.quality_report(corrupted, manifest, pool, images[np.asarray(rows)],
                                              TrainerConfig(accelerator="cpu", enable_progress_bar=False))
    assert "colour_conflict_fraction" not in reports["aligned"]  # no pixel rule for corruptions
    assert reports["conflicting"]["bias_conflict_fraction"] - reports["aligned"]["bias_conflict_fraction"] > 0.4
    assert reports["conflicting"]["label_fidelity"] > 0.8
    assert reports["conflicting"]["faithful_bias_conflict_fraction"] > 0.5
