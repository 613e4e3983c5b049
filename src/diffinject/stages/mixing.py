"""The train set of the stages that add images to the original train split: `train_debiased` and
`debiased_lff` (a pool of synthetic images) and `upsample` (copies of the mined originals).

All three add round(ratio × |train|) images, so at one `bias_conflict_ratio` the only difference
between them is where the added images come from. Only targets are read: no bias label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from diffinject.config import StageParams, slice_of
from diffinject.data.pool import PoolDraw, draw_from_pool, load_pool, repeat_evenly
from diffinject.data.tensors import ImageTensors, concat
from diffinject.models.trainer import TrainerConfig
from diffinject.models.training import FitResult
from diffinject.stages.common import fit_and_write, load_training_data, mined_train_rows
from diffinject.stages.pool_params import DebiasedConfig


@dataclass
class MixedTrainSet:
    data: ImageTensors  # the original train split followed by the added rows
    n_original: int
    n_added: int
    replacement: bool  # some added image appears more than once

    @property
    def is_original(self) -> torch.Tensor:
        """(N,) bool: True on the rows of the original train split (they come first)."""
        mask = torch.zeros(len(self.data), dtype=torch.bool)
        mask[: self.n_original] = True
        return mask


def mixing_params(name: str, config_class: type) -> StageParams:
    """Section `name`, whose null `bias_conflict_ratio` means debiased's, `trainer.*` and `seed`."""
    return StageParams({"trainer": TrainerConfig, name: config_class,
                        "debiased": slice_of(DebiasedConfig, "bias_conflict_ratio")})


def resolved_ratio(loaded: Any, name: str) -> float:
    """Section `name`'s bias_conflict_ratio, null meaning debiased's (`mixing_params` reads both), so that
    at one setting upsample and the debiased_<method> stages add as many images as train_debiased."""
    ratio = getattr(loaded, name).bias_conflict_ratio
    return loaded.debiased.bias_conflict_ratio if ratio is None else ratio


def mix(train: ImageTensors, extra: ImageTensors, ratio: float, seed: int, section: str,
        draw: Callable[[int, int, float, int], PoolDraw] = draw_from_pool) -> MixedTrainSet:
    """`train` plus round(ratio × |train|) rows of `extra` chosen by `draw` (seeded); says what it did."""
    n_train = len(train)
    if len(extra) == 0:
        print(f"{section}: {extra.source} is empty; {section}.bias_conflict_ratio={ratio} is ignored, "
              f"training on the {n_train} train samples only")
        return MixedTrainSet(train, n_train, 0, False)
    chosen = draw(len(extra), n_train, ratio, seed)
    if draw is repeat_evenly:
        low, high = chosen.requested // len(extra), -(-chosen.requested // len(extra))
        how = f"as {low}-{high} copies of each of {len(extra)} images"
    elif chosen.replacement:
        how = f"with replacement (the pool has only {len(extra)} images)"
    else:
        how = f"without replacement from {len(extra)} images"
    print(f"{section}: adding {chosen.requested} = round({ratio} x {n_train}) samples, drawn {how} of {extra.source}")
    return MixedTrainSet(concat(train, extra.take(chosen.rows)), n_train, len(chosen.rows), chosen.replacement)


def with_pool(train: ImageTensors, pool_path: str | None, root: Path, num_classes: int, ratio: float,
              seed: int, section: str) -> MixedTrainSet:
    """`train` plus a draw from the pool manifest at `pool_path` (relative to `root`); null: no pool."""
    if pool_path is None:
        print(f"{section}: no pool (params '{section}.pool' is null); {section}.bias_conflict_ratio={ratio} is ignored, "
              f"training on the {len(train)} train samples only")
        return MixedTrainSet(train, len(train), 0, False)
    return mix(train, load_pool(root / pool_path, num_classes), ratio, seed, section)


def pool_stage(params: dict[str, Any], stage: StageParams, name: str, root: Path, train: Callable[..., FitResult],
               model_info: dict[str, Any] | None = None, callbacks: list | None = None) -> dict[str, Any]:
    """debiased_lff, debiased_disent, debiased_lc: a two-branch method (`train`, as train_lff) on the
    train split plus the pool draw of section `name`; `<name>.biased_sees` chooses the rows its biased
    branch trains on (`original`: the train split's only). `callbacks` join the Trainer (the search's pruner)."""
    p = stage.load(params)
    cfg, ratio, data = getattr(p, name), resolved_ratio(p, name), load_training_data(root)
    mixed = with_pool(data.train, cfg.pool, root, data.num_classes, ratio, p.seed, name)
    biased_rows = mixed.is_original if cfg.biased_sees == "original" else None
    extra = {"n_train": mixed.n_original, "n_pool": mixed.n_added, "bias_conflict_ratio": ratio,
             "biased_rows": int(mixed.n_original if biased_rows is not None else len(mixed.data))}
    return fit_and_write(root, name, cfg, p, mixed.data, data, train, extra, model_info,
                         biased_rows=biased_rows, callbacks=callbacks)


def mined_rows(train: ImageTensors, conflicts_csv: Path) -> ImageTensors:
    """The train images whose ids `mine` wrote to conflicts.csv."""
    picked = train.take(mined_train_rows(train, conflicts_csv))
    picked.source = f"{conflicts_csv} (mined originals)"
    return picked
