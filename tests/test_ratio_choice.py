"""`bias_conflict_ratio` as a list: the pool stages train at each ratio and keep the best on valid
(stages/mixing.py), and a bad list is a one-line error naming the key."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

from diffinject.data.manifest import read_manifest
from diffinject.data.tensors import ImageTensors
from diffinject.errors import DiffinjectError
from diffinject.models.networks import NetConfig
from diffinject.models.training import FitResult
from diffinject.stages import train_debiased, upsample
from diffinject.stages.mixing import MixedTrainSet, fit_best_ratio
from tests.test_classifier_stages import _write_pool
from tests.test_efficacy_rows import write_conflicts

TINY = {
    "seed": 0,
    "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
    "debiased": {"epochs": 1},
    "upsample": {"epochs": 1},
}


def params(**sections: dict) -> dict:
    out = copy.deepcopy(TINY)
    for name, values in sections.items():
        out[name] = dict(out.get(name) or {}, **values)
    return out


def planted(valid_acc: dict[float, float]):
    """A build and a fit whose valid accuracy is `valid_acc[ratio]`, recording the ratios fitted."""
    fitted: list[float] = []

    def build(ratio: float) -> MixedTrainSet:
        data = ImageTensors(torch.zeros(1, 3, 2, 2), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), "x")
        return MixedTrainSet(data, 1, int(ratio * 100), False)

    def fit(mixed: MixedTrainSet) -> FitResult:
        ratio = mixed.n_added / 100
        fitted.append(ratio)
        return FitResult({}, NetConfig("mlp", 2, (3, 2, 2)), 1, [{"valid/acc": valid_acc[ratio]}])

    return build, fit, fitted


def test_the_best_valid_ratio_wins_and_ties_go_to_the_earlier():
    build, fit, fitted = planted({0.1: 0.70, 0.25: 0.74, 0.5: 0.74})
    choice = fit_best_ratio([0.1, 0.25, 0.5], build, fit, "debiased")
    assert fitted == [0.1, 0.25, 0.5] and choice.ratio == 0.25 and choice.mixed.n_added == 25
    assert choice.report == {"bias_conflict_ratio": 0.25, "ratio_chosen_by": "valid accuracy",
                             "ratio_valid_acc": {"0.1": 0.7, "0.25": 0.74, "0.5": 0.74}}


def test_a_set_ratio_trains_once_and_reports_nothing_new():
    build, fit, fitted = planted({0.5: 0.6})
    choice = fit_best_ratio(0.5, build, fit, "debiased")
    assert fitted == [0.5] and choice.ratio == 0.5 and choice.report == {}


def test_without_a_pool_a_list_trains_once():
    build, fit, fitted = planted({0.1: 0.6, 0.5: 0.7})
    assert fit_best_ratio([0.1, 0.5], build, fit, "debiased", has_pool=False).report == {} and fitted == [0.1]


@pytest.mark.parametrize("ratio, expected", [([], "got [], expected a number >= 0 or a non-empty list of them"),
                                             ([0.1, 0.1], "got [0.1, 0.1], expected distinct ratios"),
                                             ([0.1, -0.2], "got [0.1, -0.2], expected >= 0")])
def test_a_bad_list_is_one_line_naming_the_key(root, ratio, expected):
    with pytest.raises(DiffinjectError, match=re.escape(f"params 'debiased.bias_conflict_ratio': {expected}")):
        train_debiased.run(params(debiased={"bias_conflict_ratio": ratio}), root)
    assert not (root / "models").exists()


@pytest.mark.slow  # three one-epoch fits on the 4,000-image fixture
def test_train_debiased_writes_the_model_of_the_ratio_chosen(root):
    _write_pool(root / "pool", 5)
    out = train_debiased.run(params(debiased={"pool": "pool/pool.csv", "bias_conflict_ratio": [0.0, 0.01, 0.02]}), root)
    scores = out["ratio_valid_acc"]
    assert set(scores) == {"0", "0.01", "0.02"} and out["ratio_chosen_by"] == "valid accuracy"
    best = max(scores.values())
    chosen = next(r for r, acc in scores.items() if acc == best)  # the first best
    assert out["bias_conflict_ratio"] == float(chosen) and out["n_pool"] == round(float(chosen) * 4000)
    assert round(out["valid"]["acc"], 4) == best
    assert json.loads((root / "metrics" / "debiased.json").read_text())["bias_conflict_ratio"] == float(chosen)


@pytest.mark.slow
def test_upsample_follows_the_debiased_list(root):
    train_ids = read_manifest(root / "data" / "prepared").query("split == 'train'")["id"].tolist()
    write_conflicts(root, train_ids[:3])
    out = upsample.run(params(debiased={"bias_conflict_ratio": [0.0, 0.05]}), root)
    assert set(out["ratio_valid_acc"]) == {"0", "0.05"}
    assert out["n_copies"] == round(out["bias_conflict_ratio"] * 4000)
