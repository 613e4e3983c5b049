"""Stage `mine`: per-sample CE of the GCE-biased model on the train split; the top `mine.k` per class,
or with `k: errors` the samples it misclassifies (JTT's error set, capped per class by a budget), are
the mined bias-conflict candidates (params `mine.*`).

models/biased + data/prepared -> data/conflicts.csv (id, target, loss, rank), metrics/mine.json
(k, n_mined, and precision/recall against the true conflict flags when the manifest has them),
metrics/plots/mine/loss_hist.png (aligned vs conflicting loss histogram). Bias labels are read only
after the choice, to report it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch.nn.functional as F

from diffinject.config import StageParams, check_at_least
from diffinject.data.manifest import MANIFEST_NAME, read_manifest
from diffinject.data.tensors import load_split, num_classes_of
from diffinject.errors import DiffinjectError
from diffinject.fsutil import atomic_file, write_json
from diffinject.models.checkpoint import load_classifier
from diffinject.models.mining import check_k, error_set_per_class, loss_histogram_png, mining_report, top_k_per_class
from diffinject.models.trainer import TrainerConfig
from diffinject.models.training import predict_logits
from diffinject.stages.paths import CONFLICTS, METRICS, PLOTS, PREPARED, missing_model_hint, model_dir

SECTION = "mine"


@dataclass
class MineConfig:
    # top-K highest-loss train samples per class (DiffInject's released code: 10), or `errors`: JTT's error
    # set per class, which grows with the data (models/mining.py, error_set_per_class)
    k: int | Literal["errors"] = 3
    max_fraction: float = 0.05  # k errors: at most this fraction of a class (the budget) ...
    min_per_class: int = 3  # ... and at least this many of each class
    batch_size: int = 1024  # inference batch
    hist_bins: int = 50  # bins of the loss histogram plot

    def check(self) -> None:
        check_at_least(self, SECTION, 1, "batch_size", "hist_bins", "min_per_class")
        if not 0 < self.max_fraction <= 1:
            raise DiffinjectError(f"params '{SECTION}.max_fraction': got {self.max_fraction}, expected a fraction in (0, 1]")


PARAMS = StageParams({"trainer": TrainerConfig, SECTION: MineConfig}, seed=False)


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    p = PARAMS.load(params)
    cfg, trainer_cfg = p.mine, p.trainer
    prepared = root / PREPARED
    manifest = read_manifest(prepared)
    rows = manifest[manifest["split"] == "train"]
    if rows.empty:
        raise DiffinjectError(f"{prepared / MANIFEST_NAME}: split 'train' has no images (expected at least one)")
    if cfg.k != "errors":
        check_k(rows["target"].to_numpy(), cfg.k, str(prepared))
    train = load_split(prepared, "train", manifest)
    net, _, _ = load_classifier(model_dir(root, "biased"), num_classes=num_classes_of(manifest),
                                image_shape=train.shape, missing_hint=missing_model_hint("biased"))

    # Choose from the biased model's losses alone.
    logits = predict_logits(net, train, cfg.batch_size, trainer_cfg)
    losses = F.cross_entropy(logits, train.targets, reduction="none").numpy()
    predictions = logits.argmax(1).numpy()
    if cfg.k == "errors":
        mined = error_set_per_class(train.ids.numpy(), train.targets.numpy(), losses, predictions,
                                    cfg.max_fraction, cfg.min_per_class, str(prepared))
        rule = f"the biased model's errors per class (at most {cfg.max_fraction:g} of a class, at least {cfg.min_per_class})"
    else:
        mined = top_k_per_class(train.ids.numpy(), train.targets.numpy(), losses, cfg.k, str(prepared))
        rule = f"top {cfg.k} per class"

    # Report the choice against the true flags, when the manifest has them (rows are in train order).
    metrics: dict[str, Any] = {"k": cfg.k, "n_mined": len(mined), "n_train": len(train),
                               "n_errors": int((predictions != train.targets.numpy()).sum())}
    aligned = rows["aligned"]
    conflict = None if aligned.isna().any() else (~aligned.to_numpy(dtype=bool))
    if conflict is not None:
        metrics.update(mining_report(mined["id"].to_numpy(), train.ids.numpy(), conflict))
    is_mined = np.isin(train.ids.numpy(), mined["id"].to_numpy())

    # The plot first: it is the output most likely to fail, and then nothing else has been written.
    with atomic_file(root / PLOTS / "mine" / "loss_hist.png") as tmp:
        loss_histogram_png(losses, conflict, is_mined, cfg.hist_bins, tmp)
    with atomic_file(root / CONFLICTS) as tmp:
        mined.to_csv(tmp, index=False)
    write_json(root / METRICS / "mine.json", metrics)
    report = (f", precision {metrics['precision']:.3f}, recall {metrics['recall']:.3f} "
              f"({metrics['n_found']} of {metrics['n_true_conflicts']} true conflicts)" if conflict is not None else
              " (no bias labels: precision/recall not reported)")
    print(f"mine: {rule} -> {len(mined)} samples in {root / CONFLICTS}{report}")
    return metrics
