"""Stage `lff`, a baseline: Learning from Failure (Nam et al. 2020), a GCE-biased and a re-weighted
debiased network trained together (params `lff.*`); the debiased one is saved.

data/prepared (train, valid) -> models/lff/, metrics/lff.json, metrics/plots/train/lff.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffinject.config import load_params
from diffinject.models.lff import LfFConfig, train_lff
from diffinject.stages.common import classifier_params, classifier_stage

SECTION = "lff"
PARAMS = classifier_params(SECTION, LfFConfig)


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    return classifier_stage(params, PARAMS, SECTION, root, train_lff)


def main(params_path: str = "params.yaml") -> None:
    run(load_params(params_path))
