"""Stage `upsample`, the control a reviewer asks for (JTT, Liu et al. 2021): the original train split
plus copies of the mined conflict images of data/conflicts.csv, as many as `train_debiased` adds from
the synthetic pool (round(ratio × |train|), each mined image repeated evenly), with plain CE. Against
`train_debiased` at the same ratio, the only difference is generated vs copied images.

params `upsample.*` (`bias_conflict_ratio: null` follows `debiased.bias_conflict_ratio`).
data/prepared + data/conflicts.csv -> models/upsample/, metrics/upsample.json, metrics/plots/train/upsample.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffinject.config import load_params
from diffinject.data.tensors import repeat_evenly
from diffinject.models.training import UpsampleConfig, train_classifier
from diffinject.stages.common import write_training_outputs
from diffinject.stages.paths import CONFLICTS
from diffinject.stages.mixing import mined_rows, mix, mixing_params, stage_inputs

SECTION = "upsample"
PARAMS = mixing_params(SECTION, UpsampleConfig)


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    inputs = stage_inputs(params, PARAMS, SECTION, root)
    mined = mined_rows(inputs.data.train, root / CONFLICTS)
    mixed = mix(inputs.data.train, mined, inputs.ratio, inputs.seed, SECTION, draw=repeat_evenly)
    result = train_classifier(mixed.data, inputs.data.valid, inputs.data.num_classes, inputs.cfg, inputs.trainer,
                              inputs.seed, SECTION)
    extra = {"n_train": mixed.n_original, "n_mined": len(mined), "n_copies": mixed.n_added,
             "bias_conflict_ratio": inputs.ratio}
    return write_training_outputs(root, SECTION, result, inputs.cfg, inputs.seed, extra)


def main(params_path: str = "params.yaml") -> None:
    run(load_params(params_path))
