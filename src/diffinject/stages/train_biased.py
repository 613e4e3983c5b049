"""Stage `train_biased`: the GCE-biased classifier whose failures mining reads (params `biased.*`).

data/prepared (train, valid) -> models/biased/ (model.pt + model.json), metrics/biased.json,
metrics/plots/train/biased.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffinject.config import load_params
from diffinject.models.training import BiasedConfig
from diffinject.stages.common import classifier_params, classifier_stage

SECTION = "biased"
PARAMS = classifier_params(SECTION, BiasedConfig)


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    return classifier_stage(params, PARAMS, SECTION, root)


def main(params_path: str = "params.yaml") -> None:
    run(load_params(params_path))
