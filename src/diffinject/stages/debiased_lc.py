"""Stage `debiased_lc`: Logit Correction (the `lc` baseline's module) trained on the original train
split plus the synthetic pool — DiffInject's bias-conflict samples under LC's corrected logits and group
MixUp (the pool's conflicts are the minority partners MixUp draws).

The pool draw is `train_debiased`'s (round(ratio × |train|) images of `debiased_lc.pool`, seeded);
`debiased_lc.biased_sees` chooses the rows the biased branch's GCE averages over: `original` (default)
keeps it as biased as in plain LC, so it still names the pool's images' bias; `all` lets it fit them too.

data/prepared + pool -> models/debiased_lc/, metrics/debiased_lc.json, metrics/plots/train/debiased_lc.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffinject.models.lc import train_lc
from diffinject.stages.mixing import mixing_params, pool_stage
from diffinject.stages.pool_params import DebiasedLCConfig

SECTION = "debiased_lc"
PARAMS = mixing_params(SECTION, DebiasedLCConfig)


def run(params: dict[str, Any], root: Path = Path("."), callbacks: list | None = None) -> dict[str, Any]:
    """`callbacks` join the training's Trainer (the search's pruning callback)."""
    return pool_stage(params, PARAMS, SECTION, root, train_lc, callbacks=callbacks)
