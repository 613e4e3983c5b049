"""Stage `disent`, a baseline: DisEnt (Lee et al. 2021), an intrinsic and a bias encoder with
relative-difficulty re-weighting and bias-feature swapping (params `disent.*`); the whole network
(both encoders, the intrinsic classifier over both features) is saved.

data/prepared (train, valid) -> models/disent/, metrics/disent.json, metrics/plots/train/disent.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffinject.models.disent import train_disent
from diffinject.models.disent_config import DisEntConfig
from diffinject.models.disent_net import COMPOSITE
from diffinject.stages.common import classifier_params, fit_and_write, load_training_data

SECTION = "disent"
PARAMS = classifier_params(SECTION, DisEntConfig)


def run(params: dict[str, Any], root: Path = Path("."), callbacks: list | None = None) -> dict[str, Any]:
    """`callbacks` join the training's Trainer (the search's pruning callback)."""
    p = PARAMS.load(params)
    data = load_training_data(root)
    return fit_and_write(root, SECTION, p.disent, p, data.train, data, train_disent, model_info={"composite": COMPOSITE},
                         callbacks=callbacks)
