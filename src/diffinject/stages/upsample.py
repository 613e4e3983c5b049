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

from diffinject.data.pool import repeat_evenly
from diffinject.models.configs import UpsampleConfig
from diffinject.stages.common import fit_and_write, load_training_data
from diffinject.stages.mixing import mined_rows, mix, mixing_params, resolved_ratio
from diffinject.stages.paths import CONFLICTS

SECTION = "upsample"
PARAMS = mixing_params(SECTION, UpsampleConfig)


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    p = PARAMS.load(params)
    ratio, data = resolved_ratio(p, SECTION), load_training_data(root)
    mined = mined_rows(data.train, root / CONFLICTS)
    mixed = mix(data.train, mined, ratio, p.seed, SECTION, draw=repeat_evenly)
    extra = {"n_train": mixed.n_original, "n_mined": len(mined), "n_copies": mixed.n_added, "bias_conflict_ratio": ratio}
    return fit_and_write(root, SECTION, p.upsample, p, mixed.data, data, extra=extra)
