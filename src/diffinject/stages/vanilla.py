"""Stage `vanilla`, a baseline: the same classifier trained with plain cross-entropy (params `vanilla.*`).

data/prepared (train, valid) -> models/vanilla/, metrics/vanilla.json, metrics/plots/train/vanilla.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffinject.config import load_params
from diffinject.stages.common import classifier_params, classifier_stage

SECTION = "vanilla"
PARAMS = classifier_params(SECTION)


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    return classifier_stage(params, PARAMS, SECTION, root)


def main(params_path: str = "params.yaml") -> None:
    run(load_params(params_path))
