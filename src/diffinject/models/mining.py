"""Unsupervised conflict mining (DiffInject): the train samples a GCE-biased model finds hardest.

The biased model learns the shortcut (colour), so bias-conflicting samples — whose colour points to
another class — keep a high cross-entropy under it. Mining takes, within each class, the k samples
with the highest CE. It chooses from losses alone; bias labels are read afterwards, only to report how
well the choice matched the true conflicts (`mining_report`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from diffinject.errors import DiffinjectError

CONFLICTS_COLUMNS = ("id", "target", "loss", "rank")
# The loss histogram plot: size in inches at PLOT_DPI (600 x 350 pixels).
PLOT_SIZE = (6.0, 3.5)
PLOT_DPI = 100


def check_k(targets: np.ndarray, k: int, where: str, param: str = "mine.k") -> None:
    """k must be >= 1 and at most the size of every class present in `targets`."""
    if k < 1:
        raise DiffinjectError(f"params '{param}': got {k}, expected >= 1")
    classes, counts = np.unique(np.asarray(targets), return_counts=True)
    small = counts < k
    if small.any():
        c, n = int(classes[small][0]), int(counts[small][0])
        raise DiffinjectError(f"params '{param}': got {k}, but class {c} has only {n} train samples in {where} (expected k <= {counts.min()})")


def top_k_per_class(ids: np.ndarray, targets: np.ndarray, losses: np.ndarray, k: int, where: str = "the train split") -> pd.DataFrame:
    """The k highest-loss samples of every class: columns id, target, loss, rank (1 = highest loss),
    ordered by target then rank; ties are broken by the smaller id, so the result is deterministic."""
    check_k(targets, k, where)
    table = pd.DataFrame({"id": np.asarray(ids, dtype=np.int64), "target": np.asarray(targets, dtype=np.int64),
                          "loss": np.asarray(losses, dtype=np.float64)})
    table = table.sort_values(["target", "loss", "id"], ascending=[True, False, True], kind="stable")
    mined = table.groupby("target", sort=True).head(k).copy()
    mined["rank"] = mined.groupby("target").cumcount() + 1
    return mined.reset_index(drop=True)[list(CONFLICTS_COLUMNS)]


def error_set_per_class(ids: np.ndarray, targets: np.ndarray, losses: np.ndarray, predictions: np.ndarray,
                        max_fraction: float, min_per_class: int, where: str = "the train split") -> pd.DataFrame:
    """JTT's error set, per class: the samples the biased model misclassifies, highest loss first, at most
    ceil(max_fraction x the class's size) of a class and at least `min_per_class` (topped up by loss, so
    a class the model never misses still lends contents). It grows with the training set; columns as
    `top_k_per_class`, deterministic (ties: the smaller id)."""
    check_k(targets, min_per_class, where, "mine.min_per_class")
    table = pd.DataFrame({"id": np.asarray(ids, dtype=np.int64), "target": np.asarray(targets, dtype=np.int64),
                          "loss": np.asarray(losses, dtype=np.float64),
                          "error": np.asarray(predictions) != np.asarray(targets)})
    table = table.sort_values(["target", "loss", "id"], ascending=[True, False, True], kind="stable")
    chosen = []
    for _, group in table.groupby("target", sort=True):
        cap = max(min_per_class, int(np.ceil(max_fraction * len(group))))
        errors = group[group["error"]].head(cap)
        top_up = group[~group["error"]].head(max(0, min_per_class - len(errors)))  # highest-loss correct ones
        chosen.append(pd.concat([errors, top_up]))
    mined = pd.concat(chosen).copy()
    mined["rank"] = mined.groupby("target").cumcount() + 1
    return mined.reset_index(drop=True)[list(CONFLICTS_COLUMNS)]


def mining_report(mined_ids: np.ndarray, train_ids: np.ndarray, conflict: np.ndarray) -> dict[str, float | int]:
    """Precision and recall of the mined ids against the true conflict flags of the train split."""
    conflict_ids = set(np.asarray(train_ids)[np.asarray(conflict, dtype=bool)].tolist())
    mined = set(np.asarray(mined_ids).tolist())
    hits = len(mined & conflict_ids)
    return {
        "n_true_conflicts": len(conflict_ids),
        "n_found": hits,
        "precision": hits / len(mined) if mined else 0.0,
        "recall": hits / len(conflict_ids) if conflict_ids else 0.0,
    }


def loss_histogram_png(losses: np.ndarray, conflict: np.ndarray | None, mined: np.ndarray, bins: int, out: Path) -> None:
    """Histogram of per-sample train losses (log count scale): aligned vs conflicting when the flags are
    known, with the mined samples (boolean mask `mined`) outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = np.asarray(losses, dtype=np.float64)
    edges = np.histogram_bin_edges(losses, bins=bins)
    fig, ax = plt.subplots(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    if conflict is None:
        ax.hist(losses, bins=edges, color="tab:gray", label="train samples (no bias labels)")
    else:
        conflict = np.asarray(conflict, dtype=bool)
        ax.hist(losses[~conflict], bins=edges, color="tab:blue", alpha=0.6, label=f"bias-aligned ({(~conflict).sum()})")  # translucent: conflicts show through
        ax.hist(losses[conflict], bins=edges, color="tab:red", alpha=0.8, label=f"bias-conflicting ({conflict.sum()})")
    mined = np.asarray(mined, dtype=bool)
    ax.hist(losses[mined], bins=edges, histtype="step", color="black", linewidth=1.2, label=f"mined ({mined.sum()})")
    ax.set_yscale("log")
    ax.set_xlabel("cross-entropy under the biased model")
    ax.set_ylabel("train samples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)
