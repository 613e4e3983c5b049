"""Stage `debiased_disent`: DisEnt (the `disent` baseline's module) trained on the original train split
plus the synthetic pool — DiffInject's bias-conflict samples inside DisEnt's re-weighting and feature
swapping.

The pool draw is `train_debiased`'s (round(ratio × |train|) images of `debiased_disent.pool`, seeded);
`debiased_disent.biased_sees` chooses the rows the bias side's GCE averages over: `original` (default)
keeps the bias encoder as biased as in plain DisEnt, so the synthetic conflicts keep its high relative
difficulty weights and their bias features are swapped onto other images; `all` lets it fit them too.

data/prepared + pool -> models/debiased_disent/, metrics/debiased_disent.json, metrics/plots/train/debiased_disent.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffinject.models.disent import train_disent
from diffinject.models.disent_net import COMPOSITE
from diffinject.stages.mixing import mixing_params, pool_stage
from diffinject.stages.pool_params import DebiasedDisEntConfig

SECTION = "debiased_disent"
PARAMS = mixing_params(SECTION, DebiasedDisEntConfig)


def run(params: dict[str, Any], root: Path = Path("."), callbacks: list | None = None) -> dict[str, Any]:
    """`callbacks` join the training's Trainer (the search's pruning callback)."""
    return pool_stage(params, PARAMS, SECTION, root, train_disent, model_info={"composite": COMPOSITE}, callbacks=callbacks)
