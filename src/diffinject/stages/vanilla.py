"""Stage `vanilla`, a baseline: the same classifier trained with plain cross-entropy (params `vanilla.*`).

data/prepared (train, valid) -> models/vanilla/, metrics/vanilla.json, metrics/plots/train/vanilla.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffinject.stages.common import classifier_params, fit_and_write, load_training_data

SECTION = "vanilla"
PARAMS = classifier_params(SECTION)


def run(params: dict[str, Any], root: Path = Path("."), callbacks: list | None = None) -> dict[str, Any]:
    """`callbacks` join the training's Trainer (the search's pruning callback)."""
    p = PARAMS.load(params)
    data = load_training_data(root)
    return fit_and_write(root, SECTION, p.vanilla, p, data.train, data, callbacks=callbacks)
