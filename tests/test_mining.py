"""Mining picks the highest-loss ids per class; bad k is a one-line error naming mine.k."""

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
