"""Stage `train_debiased`: the classifier trained on every original train sample plus
`debiased.bias_conflict_ratio` × |train| samples drawn (seeded) from a pool of extra images
(params `debiased.*`).

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

from diffinject.config import load_params, section
from diffinject.data.tensors import concat, draw_from_pool, load_pool
from diffinject.models.training import DebiasedConfig, train_classifier
from diffinject.stages.common import common_inputs, load_training_data, write_training_outputs

SECTION = "debiased"


def run(params: dict[str, Any], root: Path = Path("."), callbacks: list[lightning.Callback] | None = None) -> dict[str, Any]:
    """`callbacks` join the training's Trainer (the search's pruning callback)."""
    cfg = section(params, SECTION, DebiasedConfig)
    cfg.check(SECTION)
    trainer_cfg, seed = common_inputs(params)
    data = load_training_data(root)
    n_train = len(data.train)
    train = data.train
    n_pool = 0
    replacement = False
    if cfg.pool is None:
        print(f"{SECTION}: no pool (params '{SECTION}.pool' is null); "
              f"{SECTION}.bias_conflict_ratio={cfg.bias_conflict_ratio} is ignored, training on the {n_train} train samples only")
    else:
        pool = load_pool(root / cfg.pool, data.num_classes)
        draw = draw_from_pool(len(pool), n_train, cfg.bias_conflict_ratio, seed)
        if len(pool) == 0:
            print(f"{SECTION}: pool {pool.source} is empty; {SECTION}.bias_conflict_ratio={cfg.bias_conflict_ratio} "
                  f"is ignored, training on the {n_train} train samples only")
        else:
            replacement = draw.replacement
            how = (f"with replacement (the pool has only {len(pool)} images)" if replacement
                   else f"without replacement from {len(pool)} images")
            print(f"{SECTION}: adding {draw.requested} = round({cfg.bias_conflict_ratio} x {n_train}) pool samples, "
                  f"drawn {how} of {pool.source}")
            train = concat(data.train, pool.take(draw.rows))
            n_pool = len(draw.rows)
    result = train_classifier(train, data.valid, data.num_classes, cfg, trainer_cfg, seed, SECTION, callbacks)
    extra = {"n_train": n_train, "n_pool": n_pool}
    return write_training_outputs(root, SECTION, result, cfg, seed, extra)


def main(params_path: str = "params.yaml") -> None:
    run(load_params(params_path))
