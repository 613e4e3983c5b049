"""Stage `lc`, a baseline: Logit Correction (Liu et al. 2023), a GCE-biased branch estimates each
sample's bias, and the main network trains on logits corrected by the estimated group prior, with group
MixUp (params `lc.*`); the main network is saved.

data/prepared (train, valid) -> models/lc/, metrics/lc.json, metrics/plots/train/lc.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffinject.config import load_params
from diffinject.models.lc import LCConfig, train_lc
from diffinject.stages.common import classifier_params, classifier_stage

SECTION = "lc"
PARAMS = classifier_params(SECTION, LCConfig)


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    return classifier_stage(params, PARAMS, SECTION, root, train_lc)


def main(params_path: str = "params.yaml") -> None:
    run(load_params(params_path))
