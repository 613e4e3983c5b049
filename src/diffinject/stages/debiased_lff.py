"""Stage `debiased_lff`: Learning from Failure (the `lff` baseline's module) trained on the original
train split plus the synthetic pool — DiffInject's bias-conflict samples, re-weighted by LfF.

The pool draw is `train_debiased`'s (round(ratio × |train|) images of `debiased_lff.pool`, seeded);
`debiased_lff.biased_sees` chooses the rows the GCE-biased branch trains on: `original` (default,
chosen on the valid split: docs/results.md) keeps it as biased as in plain LfF, so the synthetic
conflicts it fails on get LfF's high weights; `all` lets it train on them too.

data/prepared + pool -> models/debiased_lff/, metrics/debiased_lff.json, metrics/plots/train/debiased_lff.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffinject.config import load_params
from diffinject.models.lff import DebiasedLfFConfig, train_lff
from diffinject.stages.common import write_training_outputs
from diffinject.stages.mixing import mixing_params, stage_inputs, with_pool

SECTION = "debiased_lff"
PARAMS = mixing_params(SECTION, DebiasedLfFConfig)


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    inputs = stage_inputs(params, PARAMS, SECTION, root)
    mixed = with_pool(inputs.data.train, inputs.cfg.pool, root, inputs.data.num_classes, inputs.ratio, inputs.seed, SECTION)
    biased_rows = mixed.is_original if inputs.cfg.biased_sees == "original" else None
    result = train_lff(mixed.data, inputs.data.valid, inputs.data.num_classes, inputs.cfg, inputs.trainer, inputs.seed,
                       SECTION, biased_rows)
    extra = {"n_train": mixed.n_original, "n_pool": mixed.n_added, "bias_conflict_ratio": inputs.ratio,
             "biased_rows": int(mixed.n_original if biased_rows is not None else len(mixed.data))}
    return write_training_outputs(root, SECTION, result, inputs.cfg, inputs.seed, extra)


def main(params_path: str = "params.yaml") -> None:
    run(load_params(params_path))
