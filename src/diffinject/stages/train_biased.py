"""Stage `train_biased`: the GCE-biased classifier whose failures mining reads (params `biased.*`).

data/prepared (train, valid) -> models/biased/ (model.pt + model.json), metrics/biased.json,
metrics/plots/train/biased.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffinject.models.configs import BiasedConfig
from diffinject.stages.common import classifier_params, fit_and_write, load_training_data

SECTION = "biased"
PARAMS = classifier_params(SECTION, BiasedConfig)


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    p = PARAMS.load(params)
    data = load_training_data(root)
    return fit_and_write(root, SECTION, p.biased, p, data.train, data)
