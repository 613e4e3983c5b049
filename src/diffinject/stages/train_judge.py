"""Stage `train_judge`: the evaluation-only judges of the synthetic quality report (metrics/inject.json),
the classifier architecture of `vanilla` trained with CE (`judge.*`):

- models/judge, the label judge: does a synthetic image show its label?
- models/bias_judge, the bias judge: which bias value does it carry? (conflict = not its class's)

Both must not learn the shortcut the data teach, so they train on data without it:
- grey sources (mnist5k, idx): the unbiased train set of data/palette (each train image once, in a bias
  value drawn uniformly; any mechanism of `data.bias`);
- folder sources with bias labels: the prepared train split resampled so that every (label, bias)
  group present is drawn equally often;
- folder sources without bias labels: the label judge on colour-blind (grey) images, as before the bias
  mechanisms existed, and no bias judge.
Validation: the prepared valid split (unbiased). These are the only models besides `evaluate` that read
bias labels, and nothing in training, mining, injection or selection reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from diffinject.data.manifest import MANIFEST_NAME, read_manifest
from diffinject.data.tensors import ImageTensors, load_split, num_classes_of
from diffinject.diffusion.synthetic_quality import to_grey
from diffinject.fsutil import write_json
from diffinject.models.configs import JudgeConfig
from diffinject.stages.common import TrainingData, classifier_params, fit_and_write
from diffinject.stages.paths import METRICS, PALETTE, PREPARED, model_dir

SECTION = "judge"
BIAS_JUDGE = "bias_judge"
PARAMS = classifier_params(SECTION, JudgeConfig)
# model.json `view`: what the label judge sees (inject applies the same view to the pool)
RGB, GREY = "rgb", "grey"


def grey(data: ImageTensors) -> ImageTensors:
    return ImageTensors(to_grey(data.images), data.targets, data.ids, f"grey({data.source})")


def with_bias_targets(data: ImageTensors, bias: np.ndarray) -> ImageTensors:
    return ImageTensors(data.images, torch.tensor(bias, dtype=torch.long), data.ids, f"bias({data.source})")


def group_balanced(data: ImageTensors, bias: np.ndarray, seed: int) -> tuple[ImageTensors, np.ndarray]:
    """|data| rows drawn with replacement, each (label, bias) group present equally likely."""
    groups = pd.Series(list(zip(data.targets.tolist(), bias.tolist())))
    weight = 1.0 / groups.map(groups.value_counts()).to_numpy(dtype=np.float64)
    rows = np.random.default_rng(seed).choice(len(data), size=len(data), p=weight / weight.sum())
    return data.take(rows), bias[rows]


def judge_sets(root: Path, seed: int) -> dict[str, Any]:
    """The judges' train/valid sets and how they were made (module docstring)."""
    prepared = read_manifest(root / PREPARED)
    train, valid = load_split(root / PREPARED, "train", prepared), load_split(root / PREPARED, "valid", prepared)
    valid_bias = prepared.loc[prepared["split"] == "valid", "bias"]
    palette = read_manifest(root / PALETTE) if (root / PALETTE / MANIFEST_NAME).is_file() else None
    if palette is not None and (palette["split"] == "train").any():
        unbiased = load_split(root / PALETTE, "train", palette)
        bias = palette.loc[palette["split"] == "train", "bias"].to_numpy(dtype=np.int64)
        return {"how": "the unbiased train set of data/palette", "view": RGB, "label": (unbiased, valid),
                "bias": (with_bias_targets(unbiased, bias), with_bias_targets(valid, valid_bias.to_numpy(dtype=np.int64)))}
    train_bias = prepared.loc[prepared["split"] == "train", "bias"]
    if train_bias.notna().all() and valid_bias.notna().all():
        balanced, bias = group_balanced(train, train_bias.to_numpy(dtype=np.int64), seed)
        return {"how": "the prepared train split, (label, bias) groups drawn equally often", "view": RGB,
                "label": (balanced, valid),
                "bias": (with_bias_targets(balanced, bias), with_bias_targets(valid, valid_bias.to_numpy(dtype=np.int64)))}
    return {"how": "grey-scale train images (no bias labels: no bias judge)", "view": GREY,
            "label": (grey(train), grey(valid)), "bias": None}


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    p = PARAMS.load(params)
    sets = judge_sets(root, p.seed)
    num_classes = num_classes_of(read_manifest(root / PREPARED))
    train, valid = sets["label"]
    out = fit_and_write(root, SECTION, p.judge, p, train, TrainingData(train, valid, num_classes),
                        extra={"trained_on": sets["how"]}, model_info={"view": sets["view"]})
    bias_dir = model_dir(root, BIAS_JUDGE)
    if sets["bias"] is None:  # the folder still exists (a DVC output), with no model.json in it
        bias_dir.mkdir(parents=True, exist_ok=True)
        write_json(bias_dir / "not_trained.json", {"why": sets["how"]})
        write_json(root / METRICS / f"{BIAS_JUDGE}.json", {"trained": False, "why": sets["how"]})
        return out
    bias_train, bias_valid = sets["bias"]
    n_bias = int(max(bias_train.targets.max(), bias_valid.targets.max())) + 1
    fit_and_write(root, BIAS_JUDGE, p.judge, p, bias_train, TrainingData(bias_train, bias_valid, n_bias),
                  extra={"trained_on": sets["how"]})
    print(f"train_judge: label judge and bias judge ({n_bias} bias values) on {sets['how']} -> {model_dir(root, SECTION)}, {bias_dir}")
    return out
