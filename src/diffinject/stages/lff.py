"""Stage `lff`, a baseline: Learning from Failure (Nam et al. 2020), a GCE-biased and a re-weighted
debiased network trained together (params `lff.*`); the debiased one is saved.

data/prepared (train, valid) -> models/lff/, metrics/lff.json, metrics/plots/train/lff.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffinject.config import load_params, section
from diffinject.models.training import LfFConfig, train_lff
from diffinject.stages.common import common_inputs, load_training_data, write_training_outputs

SECTION = "lff"


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    cfg = section(params, SECTION, LfFConfig)
    cfg.check(SECTION)
    trainer_cfg, seed = common_inputs(params)
    data = load_training_data(root)
    result = train_lff(data.train, data.valid, data.num_classes, cfg, trainer_cfg, seed, SECTION)
    return write_training_outputs(root, SECTION, result, cfg, seed)


def main(params_path: str = "params.yaml") -> None:
    run(load_params(params_path))
