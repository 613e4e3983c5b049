"""Stage `upsample`, the control a reviewer asks for (JTT, Liu et al. 2021): the original train split
plus copies of the mined conflict images of data/conflicts.csv, as many as `train_debiased` adds from
the synthetic pool (round(ratio × |train|), each mined image repeated evenly), with plain CE. Against
`train_debiased` at the same ratio, the only difference is generated vs copied images.

params `upsample.*` and `debiased.bias_conflict_ratio` (a list of ratios is chosen on valid as
train_debiased's is, so the control gets the same choice).
data/prepared + data/conflicts.csv -> models/upsample/, metrics/upsample.json, metrics/plots/train/upsample.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffinject.data.pool import repeat_evenly
from diffinject.models.configs import UpsampleConfig
from diffinject.stages.common import fit, load_training_data, write_training_outputs
from diffinject.stages.mixing import fit_best_ratio, mined_rows, mix, mixing_params, pool_ratio
from diffinject.stages.paths import CONFLICTS

SECTION = "upsample"
PARAMS = mixing_params(SECTION, UpsampleConfig)


def run(params: dict[str, Any], root: Path = Path("."), callbacks: list | None = None) -> dict[str, Any]:
    """`callbacks` join the training's Trainer (the search's pruning callback)."""
    p = PARAMS.load(params)
    data = load_training_data(root)
    mined = mined_rows(data.train, root / CONFLICTS)
    choice = fit_best_ratio(pool_ratio(p),
                            lambda r: mix(data.train, mined, r, p.seed, SECTION, draw=repeat_evenly),
                            lambda mixed: fit(SECTION, p.upsample, p, mixed.data, data, callbacks=callbacks), SECTION)
    extra = {"n_train": choice.mixed.n_original, "n_mined": len(mined), "n_copies": choice.mixed.n_added,
             "bias_conflict_ratio": choice.ratio, **choice.report}
    return write_training_outputs(root, SECTION, choice.result, p.upsample, p.seed, extra)
