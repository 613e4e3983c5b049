"""Stage `train_debiased`: the classifier trained on every original train sample plus
`debiased.bias_conflict_ratio` × |train| samples drawn (seeded) from a pool of extra images
(params `debiased.*`), with `debiased.loss` (ce | gce). A list of ratios trains at each and keeps the
best on valid (stages/mixing.py).

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

from diffinject.stages.common import classifier_params, fit, load_training_data, write_training_outputs
from diffinject.stages.mixing import fit_best_ratio, with_pool
from diffinject.stages.pool_params import DebiasedConfig

SECTION = "debiased"
PARAMS = classifier_params(SECTION, DebiasedConfig)


def run(params: dict[str, Any], root: Path = Path("."), callbacks: list[lightning.Callback] | None = None) -> dict[str, Any]:
    """`callbacks` join the training's Trainer (the search's pruning callback)."""
    p = PARAMS.load(params)
    data = load_training_data(root)
    choice = fit_best_ratio(
        p.debiased.bias_conflict_ratio,
        lambda r: with_pool(data.train, p.debiased.pool, root, data.num_classes, r, p.seed, SECTION),
        lambda mixed: fit(SECTION, p.debiased, p, mixed.data, data, callbacks=callbacks), SECTION,
        has_pool=p.debiased.pool is not None)
    extra = {"n_train": choice.mixed.n_original, "n_pool": choice.mixed.n_added, **choice.report}
    return write_training_outputs(root, SECTION, choice.result, p.debiased, p.seed, extra)
