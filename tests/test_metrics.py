"""Evaluation metrics on hand-made cases; every expected number is worked out in the comments."""

import numpy as np
import pytest

from diffinject.models.evaluation import classification_metrics, confusion_matrix, dp_gap, eo_gap

# Two classes, bias b in {0, 1}, aligned <=> b == y.
#   #  y  b  pred
#   1  0  0  0   aligned   ok
#   2  0  0  0   aligned   ok
#   3  0  1  1   conflict  wrong
#   4  0  1  0   conflict  ok
#   5  1  1  1   aligned   ok
#   6  1  1  1   aligned   ok
#   7  1  0  0   conflict  wrong
#   8  1  0  1   conflict  ok
TARGET = np.array([0, 0, 0, 0, 1, 1, 1, 1])
BIAS = np.array([0, 0, 1, 1, 1, 1, 0, 0])
PRED = np.array([0, 0, 1, 0, 1, 1, 0, 1])
ALIGNED = BIAS == TARGET


def test_hand_made_two_class_case():
    m = classification_metrics(PRED, TARGET, 2, BIAS, ALIGNED)
    # acc: 6 of 8 right. aligned: #1,2,5,6 all right. conflicting: #4 and #8 of #3,4,7,8.
    assert m["acc"] == pytest.approx(0.75)
    assert m["aligned_acc"] == pytest.approx(1.0)
    assert m["conflict_acc"] == pytest.approx(0.5)
    # groups (y, b): (0,0) 2/2, (0,1) 1/2, (1,1) 2/2, (1,0) 1/2 -> worst 0.5.
    assert m["worst_group_acc"] == pytest.approx(0.5)
    # DP: b=0 (#1,2,7,8) predicts 0,0,0,1 -> P(ŷ=0)=.75, P(ŷ=1)=.25; b=1 (#3-6) predicts 1,0,1,1 ->
    # P(ŷ=0)=.25, P(ŷ=1)=.75. Gap per class .5 and .5 -> 0.5.
    assert m["dp_gap"] == pytest.approx(0.5)
    # EO, class 0: TPR b0 (#1,2) 1, b1 (#3,4) .5 -> .5; FPR b0 (#7,8) .5, b1 (#5,6) 0 -> .5.
    #     class 1: TPR b0 (#7,8) .5, b1 (#5,6) 1 -> .5; FPR b0 (#1,2) 0, b1 (#3,4) .5 -> .5.  -> 0.5.
    assert m["eo_gap"] == pytest.approx(0.5)
    assert set(m) == {"acc", "aligned_acc", "conflict_acc", "worst_group_acc", "dp_gap", "eo_gap"}


def test_confusion_matrix_rows_are_actual_columns_predicted():
    # class 0 (#1-4) predicted 0,0,1,0; class 1 (#5-8) predicted 1,1,0,1.
    np.testing.assert_array_equal(confusion_matrix(PRED, TARGET, 2), [[3, 1], [1, 3]])


def test_eo_gap_counts_false_positive_rates():
    # Three classes. TPRs are equal across bias groups, but class 0 is predicted for a class-1 sample
    # only in group b=0:
    #   y b pred: (0,0,0) (0,1,0) (1,0,0) (1,1,2)
    # class 0: TPR b0 1, b1 1 -> 0; FPR b0 (y=1,b=0 -> 0) 1, b1 (y=1,b=1 -> 2) 0 -> 1.
    # class 1: TPR b0 0, b1 0 -> 0; FPR 0 and 0 -> 0.  class 2: no positives; FPR b0 0/2, b1 1/2 -> .5.
    target, bias, pred = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), np.array([0, 0, 0, 2])
    assert eo_gap(pred, target, bias, 3) == pytest.approx(1.0)
    # DP: b0 predicts 0,0 -> P(0)=1; b1 predicts 0,2 -> P(0)=.5, P(2)=.5 -> gap .5.
    assert dp_gap(pred, bias, 3) == pytest.approx(0.5)


def test_perfect_classifier_has_no_gaps():
    m = classification_metrics(TARGET, TARGET, 2, BIAS, ALIGNED)
    assert m["acc"] == m["worst_group_acc"] == 1.0
    # each bias group holds two samples of each class, so even P(ŷ=c | b) is equal across groups
    assert m["dp_gap"] == 0.0 and m["eo_gap"] == 0.0


def test_without_bias_labels_only_accuracy():
    assert classification_metrics(PRED, TARGET, 2) == {"acc": 0.75}


def test_split_without_conflicting_samples_leaves_conflict_acc_out():
    aligned = np.ones(8, dtype=bool)
    m = classification_metrics(PRED, TARGET, 2, BIAS, aligned)
    assert "conflict_acc" not in m and m["aligned_acc"] == pytest.approx(0.75)
