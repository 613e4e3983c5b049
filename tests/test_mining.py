"""Mining picks the highest-loss ids per class; bad k is a one-line error naming mine.k."""

import shutil

import numpy as np
import pandas as pd
import pytest

from diffinject.errors import DiffinjectError
from diffinject.models.mining import loss_histogram_png, mining_report, top_k_per_class

# Class 0: ids 10-13, class 1: ids 14-17. Highest losses: class 0 -> 11 and 13 (2.0 each, tie broken
# by the smaller id), class 1 -> 14 (3.0) then 17 (1.5).
IDS = np.array([10, 11, 12, 13, 14, 15, 16, 17])
TARGETS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
LOSSES = np.array([0.1, 2.0, 0.5, 2.0, 3.0, 0.2, 0.3, 1.5])


def test_top_k_per_class_hand_made():
    mined = top_k_per_class(IDS, TARGETS, LOSSES, k=2)
    expected = pd.DataFrame({"id": [11, 13, 14, 17], "target": [0, 0, 1, 1], "loss": [2.0, 2.0, 3.0, 1.5], "rank": [1, 2, 1, 2]})
    pd.testing.assert_frame_equal(mined, expected, check_dtype=False)


def test_top_k_is_independent_of_input_order():
    order = np.random.default_rng(0).permutation(len(IDS))
    shuffled = top_k_per_class(IDS[order], TARGETS[order], LOSSES[order], k=2)
    pd.testing.assert_frame_equal(shuffled, top_k_per_class(IDS, TARGETS, LOSSES, k=2))


def test_k_equal_to_the_class_size_takes_the_whole_class():
    assert sorted(top_k_per_class(IDS, TARGETS, LOSSES, k=4)["id"]) == IDS.tolist()


def test_k_larger_than_a_class_is_an_error_naming_the_param_and_class():
    targets = np.array([0, 0, 0, 1, 1, 1, 1, 1])  # class 0 has 3 samples
    with pytest.raises(DiffinjectError, match=r"params 'mine.k': got 4, but class 0 has only 3 train samples"):
        top_k_per_class(IDS, targets, LOSSES, k=4)


def test_k_below_one_is_an_error():
    with pytest.raises(DiffinjectError, match=r"params 'mine.k': got 0, expected >= 1"):
        top_k_per_class(IDS, TARGETS, LOSSES, k=0)


def test_report_precision_recall():
    # true conflicts: 11, 12, 14. Mined 11, 13, 14, 17: 2 hits -> precision 2/4, recall 2/3.
    conflict = np.isin(IDS, [11, 12, 14])
    report = mining_report(np.array([11, 13, 14, 17]), IDS, conflict)
    assert report == {"n_true_conflicts": 3, "n_found": 2, "precision": 0.5, "recall": pytest.approx(2 / 3)}


def test_histogram_png_is_written(tmp_path):
    out = tmp_path / "hist.png"
    loss_histogram_png(LOSSES, np.isin(IDS, [11, 14]), np.isin(IDS, [11, 13, 14, 17]), 5, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loss_histogram_png(LOSSES, None, np.isin(IDS, [11]), 5, out)  # no bias labels
    assert out.stat().st_size > 0


# --- mining that scales with the data: the error set -----------------------------------------------


def planted_errors(n_per_class: int, error_fraction: float, seed: int = 0):
    """Two classes; the biased model misses `error_fraction` of each class, and a missed sample has a
    high loss, but so do a few samples it gets right (CE above log 2 without an error)."""
    rng = np.random.default_rng(seed)
    targets = np.repeat([0, 1], n_per_class)
    errors = rng.random(len(targets)) < error_fraction
    losses = np.where(errors, 1.0 + rng.random(len(targets)), 0.1 * rng.random(len(targets)))
    losses[np.flatnonzero(~errors)[:4]] = 5.0  # right, and still the highest losses of all
    predictions = np.where(errors, 1 - targets, targets)
    return np.arange(len(targets)), targets, losses, predictions, errors


def test_the_error_set_grows_with_the_training_set():
    from diffinject.models.mining import error_set_per_class

    counts = []
    for n in (200, 2000, 20000):
        ids, targets, losses, predictions, errors = planted_errors(n, 0.01)
        mined = error_set_per_class(ids, targets, losses, predictions, max_fraction=0.05, min_per_class=1)
        assert set(mined["id"]) == set(ids[errors])  # the errors, not the right samples with a high loss
        counts.append(len(mined))
    assert counts[0] < counts[1] < counts[2] and counts[2] > 100


def test_the_error_set_is_capped_and_topped_up_per_class():
    from diffinject.models.mining import error_set_per_class

    ids, targets, losses, predictions, errors = planted_errors(100, 0.3)
    capped = error_set_per_class(ids, targets, losses, predictions, max_fraction=0.05, min_per_class=1)
    assert capped.groupby("target").size().tolist() == [5, 5]
    assert capped.merge(pd.DataFrame({"id": ids, "error": errors}))["error"].all()
    top = capped.groupby("target")["loss"].min()  # the highest-loss errors of each class
    for c in (0, 1):
        assert (losses[errors & (targets == c)] >= top[c]).sum() == 5
    none = error_set_per_class(ids, targets, losses, targets, max_fraction=0.05, min_per_class=3)  # no error at all
    pd.testing.assert_frame_equal(none, top_k_per_class(ids, targets, losses, 3))  # topped up by loss


def test_mining_errors_reads_no_bias_label(tmp_path, prepared_mnist):
    """The same conflicts.csv from a manifest with null bias and aligned columns."""
    from diffinject.stages import mine, train_biased
    from tests.conftest import make_root, null_bias_copy

    params = {"trainer": {"accelerator": "cpu", "enable_progress_bar": False}, "biased": {"epochs": 1},
              "mine": {"k": "errors"}}
    labelled = make_root(tmp_path, prepared_mnist, "labelled")
    train_biased.run(params, labelled)
    unlabelled = make_root(tmp_path, prepared_mnist, "unlabelled")
    (unlabelled / "data" / "prepared").unlink()
    null_bias_copy(prepared_mnist, unlabelled / "data" / "prepared")
    (unlabelled / "models").mkdir(exist_ok=True)
    shutil.copytree(labelled / "models" / "biased", unlabelled / "models" / "biased")
    report = mine.run(params, labelled)
    mine.run(params, unlabelled)
    a, b = (pd.read_csv(r / "data" / "conflicts.csv") for r in (labelled, unlabelled))
    pd.testing.assert_frame_equal(a, b)
    assert report["n_mined"] == len(a) >= 30 and 0 <= report["precision"] <= 1
