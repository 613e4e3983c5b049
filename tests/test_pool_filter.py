"""The pool filter (`injection.filter`): which images enter the pool, that it fills or stops at its
cap, and that it reads no bias label."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from diffinject.diffusion.injection_params import InjectionParams, PoolFilter
from diffinject.diffusion.pool_filter import Verdict, filter_report, make_judge
from diffinject.errors import DiffinjectError


def one_hot_proba(classes: np.ndarray, confidence: np.ndarray, n_classes: int = 10) -> np.ndarray:
    proba = np.full((len(classes), n_classes), 0.0)
    proba[np.arange(len(classes)), classes] = confidence
    rest = (1 - confidence) / (n_classes - 1)
    return proba + (proba == 0) * rest[:, None]


def test_the_judge_keeps_what_the_reference_reads_confidently_and_the_biased_model_misses():
    targets = np.array([0, 1, 2, 3, 4])
    read_as = np.array([0, 1, 2, 9, 4])  # image 3: the reference reads another class
    confidence = np.array([0.9, 0.4, 0.9, 0.9, 0.9])  # image 1: too unsure
    biased = np.array([5, 5, 2, 5, 5])  # image 2: the biased model predicts the label (an aligned image)
    judge = make_judge(PoolFilter(enabled=True, min_confidence=0.5),
                       lambda images: one_hot_proba(read_as, confidence), lambda images: biased)
    verdict = judge(torch.zeros(5, 3, 4, 4, dtype=torch.uint8), targets)
    assert verdict.keep.tolist() == [True, False, False, False, True]
    assert verdict.reads_label.tolist() == [True, False, True, False, True]
    lenient = make_judge(PoolFilter(enabled=True, min_confidence=0.3, reject_biased=False),
                         lambda images: one_hot_proba(read_as, confidence), lambda images: biased)
    assert lenient(torch.zeros(5, 3, 4, 4, dtype=torch.uint8), targets).keep.tolist() == [True, True, True, False, True]


def test_the_report_counts_both_checks():
    records = [dict(kept=k, reads_label=r, biased_pred=b, target=0, confidence=c)
               for k, r, b, c in [(True, True, 1, 0.9), (False, True, 0, 0.8), (False, False, 1, 0.1), (True, True, 2, 0.7)]]
    report = filter_report(records, 3, PoolFilter(enabled=True))
    assert (report["tried"], report["kept"], report["kept_fraction"]) == (4, 2, 0.5)
    assert (report["reads_label_rate"], report["conflict_rate"], report["short_by"]) == (0.75, 0.75, 1)


@pytest.mark.parametrize("key, value", [("min_confidence", 1.0), ("min_confidence", -0.1), ("max_tries", 0.5)])
def test_bad_filter_params_name_the_dotted_key(key, value):
    from diffinject.config import build_config

    with pytest.raises(DiffinjectError, match=rf"params 'injection.filter.{key}'"):
        build_config(InjectionParams, {"filter": {"enabled": True, key: value}}, "injection")
    with pytest.raises(DiffinjectError, match=r"params 'injection.filter.nope': unknown key"):
        build_config(InjectionParams, {"filter": {"nope": 1}}, "injection")


# --- the stage, with a planted judge -----------------------------------------------------------------


def planted_judge(reject):
    """A judge that rejects the tries whose generation index `reject(i)` says (it counts the images it
    is shown: one rank generates the batches in order)."""
    seen = [0]

    def judge(images: torch.Tensor, targets: np.ndarray) -> Verdict:
        index = np.arange(seen[0], seen[0] + len(targets))
        seen[0] += len(targets)
        keep = ~np.vectorize(reject)(index).astype(bool)
        return Verdict(keep, keep.astype(float), keep, (targets + 1) % 10)

    return judge


def run_filtered(tmp_path, prepared_mnist, tiny_ddpm, monkeypatch, reject, n=8, max_tries=2.0):
    from diffinject.stages import inject
    from tests.conftest import inverted_repo

    monkeypatch.setattr(inject, "pool_judge", lambda *args: (planted_judge(reject), "planted"))
    root = inverted_repo(tmp_path / "repo", prepared_mnist, *tiny_ddpm, 6)
    params = {"trainer": {"accelerator": "cpu", "enable_progress_bar": False},
              "injection": {"auto": False, "n_gen_step": 6, "n_inv_step": 6, "n_samples": n, "n_samples_ratio": None,
                            "batch_size": 4, "label_from": "content",
                            "filter": {"enabled": True, "max_tries": max_tries}}}
    return root, inject.run(params, root)


def test_a_planted_pool_keeps_exactly_the_tries_the_judge_passes(tmp_path, prepared_mnist, tiny_ddpm, monkeypatch):
    root, report = run_filtered(tmp_path, prepared_mnist, tiny_ddpm, monkeypatch, lambda i: i % 3 == 0)
    pool = pd.read_parquet(root / "data" / "synthetic" / "manifest.parquet")
    assert pool["id"].tolist() == [1, 2, 4, 5, 7, 8, 10, 11]  # the first 8 tries not divisible by 3
    assert sorted(p.name for p in (root / "data" / "synthetic" / "images").rglob("*.png")) == \
        sorted(Path(p).name for p in pool["path"])
    assert report["filter"]["tried"] == 12 and report["filter"]["kept"] == 8 and "short_by" not in report["filter"]
    assert json.loads((root / "metrics" / "inject.json").read_text())["filter"]["kept_fraction"] == round(8 / 12, 4)


def test_the_pool_stops_at_its_cap_and_says_so(tmp_path, prepared_mnist, tiny_ddpm, monkeypatch, capsys):
    root, report = run_filtered(tmp_path, prepared_mnist, tiny_ddpm, monkeypatch, lambda i: i not in (3, 9))
    assert report["filter"]["tried"] == 16 and report["filter"]["short_by"] == 6  # max_tries 2 x 8
    assert pd.read_parquet(root / "data" / "synthetic" / "manifest.parquet")["id"].tolist() == [3, 9]
    assert "the filter kept 2 of the 8 pool images wanted after 16 tries" in capsys.readouterr().out


def test_a_filter_nothing_passes_is_a_one_line_error(tmp_path, prepared_mnist, tiny_ddpm, monkeypatch):
    with pytest.raises(DiffinjectError, match=r"params 'injection.filter': none of 16 generated images passed") as caught:
        run_filtered(tmp_path, prepared_mnist, tiny_ddpm, monkeypatch, lambda i: True)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "repo" / "data" / "synthetic").exists()


def test_the_filter_off_makes_the_unfiltered_pool(tmp_path, prepared_mnist, tiny_ddpm, monkeypatch):
    """The first pool-size pairs of the tries are the unfiltered pool's: a judge that keeps every image
    gives the unfiltered files."""
    from diffinject.stages import inject
    from tests.conftest import inverted_repo

    root_all, report = run_filtered(tmp_path / "all", prepared_mnist, tiny_ddpm, monkeypatch, lambda i: False)
    root = inverted_repo(tmp_path / "off" / "repo", prepared_mnist, *tiny_ddpm, 6)
    inject.run({"trainer": {"accelerator": "cpu", "enable_progress_bar": False},
                "injection": {"auto": False, "n_gen_step": 6, "n_inv_step": 6, "n_samples": 8, "n_samples_ratio": None,
                              "batch_size": 4, "label_from": "content"}}, root)
    files = lambda r: {p.relative_to(r): p.read_bytes() for p in (r / "data" / "synthetic" / "images").rglob("*.png")}  # noqa: E731
    assert files(root_all) == files(root)
