"""Stage `train_debiased`: the classifier trained on every original train sample plus
`debiased.bias_conflict_ratio` × |train| samples drawn (seeded) from a pool of extra images
(params `debiased.*`), with `debiased.loss` (ce | gce).

The pool (`debiased.pool`) is any manifest of images — .parquet or .csv with columns id, path, target,
paths relative to the manifest's folder — such as the synthetic set of the `inject` stage. With no
pool (null, or a manifest with no rows) the ratio is ignored and this says so. A pool smaller than the
requested draw is sampled with replacement, also said in the log.

data/prepared (+ pool) -> models/debiased/, metrics/debiased.json, metrics/plots/train/debiased.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning

from diffinject.config import load_params
from diffinject.models.training import DebiasedConfig, train_classifier
from diffinject.stages.common import classifier_params, load_training_data, write_training_outputs
from diffinject.stages.mixing import with_pool

SECTION = "debiased"
PARAMS = classifier_params(SECTION, DebiasedConfig)


def run(params: dict[str, Any], root: Path = Path("."), callbacks: list[lightning.Callback] | None = None) -> dict[str, Any]:
    """`callbacks` join the training's Trainer (the search's pruning callback)."""
    p = PARAMS.load(params)
    cfg, trainer_cfg, seed = p.debiased, p.trainer, p.seed
    data = load_training_data(root)
    mixed = with_pool(data.train, cfg.pool, root, data.num_classes, cfg.bias_conflict_ratio, seed, SECTION)
    result = train_classifier(mixed.data, data.valid, data.num_classes, cfg, trainer_cfg, seed, SECTION, callbacks)
    extra = {"n_train": mixed.n_original, "n_pool": mixed.n_added}
    return write_training_outputs(root, SECTION, result, cfg, seed, extra)


def main(params_path: str = "params.yaml") -> None:
    run(load_params(params_path))
