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
    report = filter_report(records, {0: 3}, PoolFilter(enabled=True))
    assert (report["tried"], report["kept"], report["kept_fraction"]) == (4, 2, 0.5)
    assert (report["reads_label_rate"], report["conflict_rate"], report["short_by"]) == (0.75, 0.75, 1)
    assert report["short_classes"] == {"0": 1}
    assert "short_by" not in filter_report(records, {0: 2}, PoolFilter(enabled=True))


@pytest.mark.parametrize("key, value", [("min_confidence", 1.0), ("min_confidence", -0.1), ("max_tries", 0.5)])
def test_bad_filter_params_name_the_dotted_key(key, value):
    from diffinject.config import build_config

    with pytest.raises(DiffinjectError, match=rf"params 'injection.filter.{key}'"):
        build_config(InjectionParams, {"filter": {"enabled": True, key: value}}, "injection")
    with pytest.raises(DiffinjectError, match=r"params 'injection.filter.nope': unknown key"):
        build_config(InjectionParams, {"filter": {"nope": 1}}, "injection")


# --- the stage, with a planted judge -----------------------------------------------------------------
N, BATCH = 20, 4


def planted_judge(rejected_labels: set[int]):
    """A reference that disagrees on every image of `rejected_labels` and reads every other one."""

    def judge(images: torch.Tensor, targets: np.ndarray) -> Verdict:
        keep = ~np.isin(targets, sorted(rejected_labels))
        return Verdict(keep, keep.astype(float), keep, (targets + 1) % 10)

    return judge


def try_labels(root, tries: int) -> np.ndarray:
    """The synthetic label of every try, as inject draws its pairs (seed 0, label from the content)."""
    from diffinject.diffusion.injection import make_pairs, pair_labels
    from diffinject.diffusion.inversion_store import CONTENT, STYLE, load_inverted

    contents, styles = (load_inverted(root / "data" / "inversions" / kind) for kind in (CONTENT, STYLE))
    pairs = make_pairs(contents.targets.numpy(), styles.targets.numpy(), tries, 0, "content",
                       contents.proxy.numpy(), styles.proxy.numpy())
    return pair_labels(pairs, contents, styles, "content")


def run_filtered(tmp_path, prepared_mnist, tiny_ddpm, monkeypatch, rejected_labels, max_tries=2.0):
    from diffinject.stages import inject
    from tests.conftest import inverted_repo

    monkeypatch.setattr(inject, "pool_judge", lambda *args: (planted_judge(rejected_labels), "planted"))
    root = inverted_repo(tmp_path / "repo", prepared_mnist, *tiny_ddpm, 6)
    params = {"trainer": {"accelerator": "cpu", "enable_progress_bar": False},
              "injection": {"auto": False, "n_gen_step": 6, "n_inv_step": 6, "n_samples": N, "n_samples_ratio": None,
                            "batch_size": BATCH, "label_from": "content",
                            "filter": {"enabled": True, "max_tries": max_tries}}}
    return root, inject.run(params, root)


def test_a_planted_pool_keeps_exactly_the_rest_and_says_what_is_short(tmp_path, prepared_mnist, tiny_ddpm, monkeypatch, capsys):
    root, report = run_filtered(tmp_path, prepared_mnist, tiny_ddpm, monkeypatch, {3, 7})
    labels = try_labels(root, 2 * N)
    pool = pd.read_parquet(root / "data" / "synthetic" / "manifest.parquet")
    # every other label fills its quota with its first tries: exactly the unfiltered pool's images of it
    assert pool["id"].tolist() == [i for i in range(N) if labels[i] not in (3, 7)]
    assert sorted(p.name for p in (root / "data" / "synthetic" / "images").rglob("*.png")) == \
        sorted(Path(p).name for p in pool["path"])
    wanted = {y: int((labels[:N] == y).sum()) for y in (3, 7) if (labels[:N] == y).any()}
    assert report["filter"]["short_classes"] == {str(y): k for y, k in sorted(wanted.items())}
    assert report["filter"]["tried"] <= 2 * N and report["filter"]["kept"] == len(pool)
    assert f"the filter kept {len(pool)} of the {N} pool images wanted" in capsys.readouterr().out
    assert json.loads((root / "metrics" / "inject.json").read_text())["filter"]["short_by"] == sum(wanted.values())


def test_a_filter_nothing_passes_is_a_one_line_error(tmp_path, prepared_mnist, tiny_ddpm, monkeypatch):
    with pytest.raises(DiffinjectError, match=r"params 'injection.filter': none of 40 generated images passed") as caught:
        run_filtered(tmp_path, prepared_mnist, tiny_ddpm, monkeypatch, set(range(10)))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "repo" / "data" / "synthetic").exists()


def test_a_judge_that_passes_everything_makes_the_unfiltered_pool(tmp_path, prepared_mnist, tiny_ddpm, monkeypatch):
    """The first pool-size tries are the unfiltered pool's pairs and noise, and their class mix is the
    quota: a judge that keeps every image gives the unfiltered files."""
    from diffinject.stages import inject
    from tests.conftest import inverted_repo

    root_all, report = run_filtered(tmp_path / "all", prepared_mnist, tiny_ddpm, monkeypatch, set())
    assert report["filter"]["tried"] == N and "short_by" not in report["filter"]
    root = inverted_repo(tmp_path / "off" / "repo", prepared_mnist, *tiny_ddpm, 6)
    inject.run({"trainer": {"accelerator": "cpu", "enable_progress_bar": False},
                "injection": {"auto": False, "n_gen_step": 6, "n_inv_step": 6, "n_samples": N, "n_samples_ratio": None,
                              "batch_size": BATCH, "label_from": "content"}}, root)
    files = lambda r: {p.relative_to(r): p.read_bytes() for p in (r / "data" / "synthetic" / "images").rglob("*.png")}  # noqa: E731
    assert files(root_all) == files(root)
