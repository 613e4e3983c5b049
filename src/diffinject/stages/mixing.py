"""The train set of the stages that add images to the original train split: `train_debiased` and
`debiased_lff` (a pool of synthetic images) and `upsample` (copies of the mined originals).

All three add round(ratio × |train|) images, so at one `bias_conflict_ratio` the only difference
between them is where the added images come from. Only targets are read: no bias label.

`bias_conflict_ratio` is a number, or a list of numbers: the stage then trains once at each and keeps
the model with the best valid accuracy (ties: the earlier ratio), the ratio chosen per dataset the
way every other model choice is, on the valid split and without a bias label. Its metrics say which
ratio won and what each scored (`ratio_valid_acc`).
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
from diffinject.stages.common import fit, load_training_data, mined_train_rows, write_training_outputs
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
    """Section `name`, `debiased.bias_conflict_ratio` (the ratio's one home), `trainer.*` and `seed`."""
    return StageParams({"trainer": TrainerConfig, name: config_class,
                        "debiased": slice_of(DebiasedConfig, "bias_conflict_ratio")})


def pool_ratio(loaded: Any) -> float | list[float]:
    """`debiased.bias_conflict_ratio`, the one ratio every stage that adds images reads (`mixing_params`),
    so that upsample and the debiased_<method> stages add as many images as train_debiased and a search's
    ratio reaches whichever of them trains."""
    return loaded.debiased.bias_conflict_ratio


@dataclass
class RatioChoice:
    ratio: float
    mixed: MixedTrainSet
    result: FitResult
    report: dict[str, Any]  # the metrics keys that say how the ratio was chosen (empty for a set number)


def fit_best_ratio(setting: float | list[float], build: Callable[[float], MixedTrainSet],
                   train_on: Callable[[MixedTrainSet], FitResult], section: str, has_pool: bool = True) -> RatioChoice:
    """`train_on(build(ratio))`: at the one ratio set, or at each ratio of a list, keeping the best valid
    accuracy of the selected epochs (ties: the earlier ratio; module docstring). Without a pool every
    ratio trains on the same rows, so a list trains once."""
    ratios = [float(r) for r in setting] if isinstance(setting, (list, tuple)) else [float(setting)]
    if not has_pool:
        ratios = ratios[:1]
    best: RatioChoice | None = None
    scores: dict[str, float] = {}
    for ratio in ratios:
        mixed = build(ratio)
        result = train_on(mixed)
        scores[f"{ratio:g}"] = round(float(result.selected["valid/acc"]), 4)
        if best is None or result.selected["valid/acc"] > best.result.selected["valid/acc"]:
            best = RatioChoice(ratio, mixed, result, {})
    assert best is not None  # check_ratio refuses an empty list
    if len(ratios) > 1:
        print(f"{section}: bias_conflict_ratio {best.ratio:g} chosen on valid accuracy "
              f"({', '.join(f'{r}: {a:.4f}' for r, a in scores.items())})")
        best.report = {"bias_conflict_ratio": best.ratio, "ratio_chosen_by": "valid accuracy",
                       "ratio_valid_acc": scores}
    return best


def mix(train: ImageTensors, extra: ImageTensors, ratio: float, seed: int, section: str,
        draw: Callable[[int, int, float, int], PoolDraw] = draw_from_pool) -> MixedTrainSet:
    """`train` plus round(ratio × |train|) rows of `extra` chosen by `draw` (seeded); says what it did."""
    n_train = len(train)
    if len(extra) == 0:
        print(f"{section}: {extra.source} is empty; debiased.bias_conflict_ratio={ratio} is ignored, "
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
        print(f"{section}: no pool (params '{section}.pool' is null); debiased.bias_conflict_ratio={ratio} is ignored, "
              f"training on the {len(train)} train samples only")
        return MixedTrainSet(train, len(train), 0, False)
    return mix(train, load_pool(root / pool_path, num_classes), ratio, seed, section)


def pool_stage(params: dict[str, Any], stage: StageParams, name: str, root: Path, train: Callable[..., FitResult],
               model_info: dict[str, Any] | None = None, callbacks: list | None = None) -> dict[str, Any]:
    """debiased_lff, debiased_disent, debiased_lc: a two-branch method (`train`, as train_lff) on the
    train split plus the pool draw of section `name`; `<name>.biased_sees` chooses the rows its biased
    branch trains on (`original`: the train split's only). `callbacks` join the Trainer (the search's pruner)."""
    p = stage.load(params)
    cfg, data = getattr(p, name), load_training_data(root)

    def biased_rows(mixed: MixedTrainSet) -> torch.Tensor | None:
        return mixed.is_original if cfg.biased_sees == "original" else None

    choice = fit_best_ratio(
        pool_ratio(p), lambda r: with_pool(data.train, cfg.pool, root, data.num_classes, r, p.seed, name),
        lambda mixed: fit(name, cfg, p, mixed.data, data, train, biased_rows=biased_rows(mixed), callbacks=callbacks),
        name, has_pool=cfg.pool is not None)
    mixed, rows = choice.mixed, biased_rows(choice.mixed)
    extra = {"n_train": mixed.n_original, "n_pool": mixed.n_added, "bias_conflict_ratio": choice.ratio,
             "biased_rows": int(mixed.n_original if rows is not None else len(mixed.data)), **choice.report}
    return write_training_outputs(root, name, choice.result, cfg, p.seed, extra, model_info)


def mined_rows(train: ImageTensors, conflicts_csv: Path) -> ImageTensors:
    """The train images whose ids `mine` wrote to conflicts.csv."""
    picked = train.take(mined_train_rows(train, conflicts_csv))
    picked.source = f"{conflicts_csv} (mined originals)"
    return picked
