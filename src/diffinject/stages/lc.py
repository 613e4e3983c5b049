"""Stage `lc`, a baseline: Logit Correction (Liu et al. 2023), a GCE-biased branch estimates each
sample's bias, and the main network trains on logits corrected by the estimated group prior, with group
MixUp (params `lc.*`); the main network is saved.

data/prepared (train, valid) -> models/lc/, metrics/lc.json, metrics/plots/train/lc.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffinject.models.lc import LCConfig, train_lc
from diffinject.stages.common import classifier_params, fit_and_write, load_training_data

SECTION = "lc"
PARAMS = classifier_params(SECTION, LCConfig)


def run(params: dict[str, Any], root: Path = Path("."), callbacks: list | None = None) -> dict[str, Any]:
    """`callbacks` join the training's Trainer (the search's pruning callback)."""
    p = PARAMS.load(params)
    data = load_training_data(root)
    return fit_and_write(root, SECTION, p.lc, p, data.train, data, train_lc, callbacks=callbacks)
