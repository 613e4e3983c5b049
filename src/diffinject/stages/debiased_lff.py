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

from diffinject.models.lff import train_lff
from diffinject.stages.mixing import mixing_params, pool_stage
from diffinject.stages.pool_params import DebiasedLfFConfig

SECTION = "debiased_lff"
PARAMS = mixing_params(SECTION, DebiasedLfFConfig)


def run(params: dict[str, Any], root: Path = Path("."), callbacks: list | None = None) -> dict[str, Any]:
    """`callbacks` join the training's Trainer (the search's pruning callback)."""
    return pool_stage(params, PARAMS, SECTION, root, train_lff, callbacks=callbacks)
