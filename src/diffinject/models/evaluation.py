"""Classification metrics of the evaluation contract (docs/design.md, `metrics/eval.json`).

With ŷ the prediction, y the target and b the bias attribute (colour) of a sample:

- `acc`             P(ŷ = y) over the whole split. Valid and test are unbiased, so this is the
                    "unbiased accuracy" of LfF/DisEnt, the headline number.
- `aligned_acc`     P(ŷ = y | aligned), `conflict_acc` P(ŷ = y | not aligned) (bias-aligned: b is the
                    colour the train split pairs with y; DiffInject's code calls conflict_acc "unbiased").
- `worst_group_acc` min over the (y, b) groups present in the split of P(ŷ = y | y, b).
- `dp_gap`          demographic-parity gap across bias groups:
                        max over classes c of  [ max_b P(ŷ = c | b) − min_b P(ŷ = c | b) ].
- `eo_gap`          equalized-odds gap across bias groups, the worse of the true- and false-positive
                    rate gaps of any class:
                        max over c of max( range_b P(ŷ = c | y = c, b),  range_b P(ŷ = c | y ≠ c, b) ),
                    range_b = max_b − min_b over the groups b that have such samples.
All gaps are 0 for a perfectly fair classifier and at most 1. Bias metrics need bias labels: when a
split has none (user data), only `acc` is reported, and a metric whose group is empty (no conflicting
sample in a split) is left out rather than written as null.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

METRICS = ("acc", "aligned_acc", "conflict_acc", "worst_group_acc", "dp_gap", "eo_gap")


def _range(values: list[float]) -> float:
    return max(values) - min(values) if values else 0.0


def dp_gap(pred: np.ndarray, bias: np.ndarray, num_classes: int) -> float:
    """max_c [max_b P(ŷ=c | b) − min_b P(ŷ=c | b)]."""
    groups = np.unique(bias)
    gaps = [_range([float(np.mean(pred[bias == b] == c)) for b in groups]) for c in range(num_classes)]
    return float(max(gaps))


def eo_gap(pred: np.ndarray, target: np.ndarray, bias: np.ndarray, num_classes: int) -> float:
    """max_c max(TPR range, FPR range) across bias groups, each rate over groups that have samples."""
    gaps = []
    for c in range(num_classes):
        tpr, fpr = [], []
        for b in np.unique(bias):
            positive = (target == c) & (bias == b)
            negative = (target != c) & (bias == b)
            if positive.any():
                tpr.append(float(np.mean(pred[positive] == c)))
            if negative.any():
                fpr.append(float(np.mean(pred[negative] == c)))
        gaps.append(max(_range(tpr), _range(fpr)))
    return float(max(gaps))


def worst_group_acc(pred: np.ndarray, target: np.ndarray, bias: np.ndarray) -> float:
    groups = pd.DataFrame({"y": target, "b": bias, "ok": pred == target}).groupby(["y", "b"])["ok"].mean()
    return float(groups.min())


def group_sizes(target: np.ndarray, bias: np.ndarray) -> dict[str, int]:
    """How many (y, b) groups a split has and the size of its smallest: what worst_group_acc and the
    gaps rest on (a group of 5 images moves them by 0.2 per image)."""
    counts = pd.Series(np.ones(len(target))).groupby([np.asarray(target), np.asarray(bias)]).size()
    return {"n_groups": int(len(counts)), "min_group_size": int(counts.min())}


def classification_metrics(pred: np.ndarray, target: np.ndarray, num_classes: int,
                           bias: np.ndarray | None = None, aligned: np.ndarray | None = None) -> dict[str, float]:
    """The metrics of the contract for one model on one split; `bias`/`aligned` None = unlabelled."""
    pred, target = np.asarray(pred), np.asarray(target)
    correct = pred == target
    out = {"acc": float(correct.mean())}
    if aligned is not None:
        aligned = np.asarray(aligned, dtype=bool)
        if aligned.any():
            out["aligned_acc"] = float(correct[aligned].mean())
        if (~aligned).any():
            out["conflict_acc"] = float(correct[~aligned].mean())
    if bias is not None:
        bias = np.asarray(bias)
        out["worst_group_acc"] = worst_group_acc(pred, target, bias)
        out["dp_gap"] = dp_gap(pred, bias, num_classes)
        out["eo_gap"] = eo_gap(pred, target, bias, num_classes)
    return out


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts; row = actual class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(target), np.asarray(pred)), 1)
    return matrix
