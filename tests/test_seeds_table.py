"""benchmarks/seeds_table.py's bookkeeping: which variants it trains besides the defaults, the summary
over seeds, and the bar chart (the stages themselves are tested on their own)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def seeds_table():
    spec = importlib.util.spec_from_file_location("seeds_table", REPO / "benchmarks" / "seeds_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variants_are_the_values_params_do_not_set(seeds_table):
    gce = {"debiased": {"loss": "gce"}, "debiased_lff": {"biased_sees": "original"}, "debiased_disent": {"biased_sees": "all"},
           "debiased_lc": {"biased_sees": "all"}}
    assert {k: v[2] for k, v in seeds_table.variants(gce).items()} == {
        "debiased_ce": {"debiased.loss": "ce"}, "debiased_lff_all": {"debiased_lff.biased_sees": "all"},
        "debiased_disent_original": {"debiased_disent.biased_sees": "original"},
        "debiased_lc_original": {"debiased_lc.biased_sees": "original"}}
    ce = {"debiased": {"loss": "ce"}, "debiased_lff": {"biased_sees": "all"}}
    assert set(seeds_table.variants(ce)) == {"debiased_gce", "debiased_lff_original", "debiased_disent_all", "debiased_lc_all"}
    assert seeds_table.model_names(gce, with_pool=False) == list(seeds_table.BASELINES)
    assert seeds_table.model_names(gce, with_pool=True)[-8:] == [
        "debiased", "debiased_lff", "debiased_disent", "debiased_lc",
        "debiased_ce", "debiased_lff_all", "debiased_disent_original", "debiased_lc_original"]
    assert seeds_table.model_names(gce, with_pool=True, with_variants=False)[-2:] == ["debiased_disent", "debiased_lc"]


def test_summary_is_mean_and_sample_std_over_seeds_and_the_chart_is_drawn(seeds_table, tmp_path):
    rows = [{"seed": s, "precision": 0.9, "recall": 0.7, "lff_test_acc": acc, "lff_valid_acc": acc + 0.01,
             "lff_best_epoch": 3} for s, acc in enumerate((0.5, 0.6, 0.7))]
    summary = seeds_table.summarise(rows, ["lff"])
    assert summary["lff_test_acc"]["mean"] == pytest.approx(0.6) and summary["lff_test_acc"]["std"] == pytest.approx(0.1)
    assert "lff_best_epoch" not in summary and summary["precision"] == {"mean": 0.9, "std": 0.0}
    seeds_table.efficacy_chart(summary, ["lff"], tmp_path / "chart.png", n_seeds=3)
    assert (tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"
