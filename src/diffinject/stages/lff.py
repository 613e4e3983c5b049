"""Stage `lff`, a baseline: Learning from Failure (Nam et al. 2020), a GCE-biased and a re-weighted
debiased network trained together (params `lff.*`); the debiased one is saved.

data/prepared (train, valid) -> models/lff/, metrics/lff.json, metrics/plots/train/lff.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffinject.models.lff import LfFConfig, train_lff
from diffinject.stages.common import classifier_params, fit_and_write, load_training_data

SECTION = "lff"
PARAMS = classifier_params(SECTION, LfFConfig)


def run(params: dict[str, Any], root: Path = Path("."), callbacks: list | None = None) -> dict[str, Any]:
    """`callbacks` join the training's Trainer (the search's pruning callback)."""
    p = PARAMS.load(params)
    data = load_training_data(root)
    return fit_and_write(root, SECTION, p.lff, p, data.train, data, train_lff, callbacks=callbacks)
