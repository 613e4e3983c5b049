"""Stage `evaluate`: every model of `evaluate.models` on the valid and test splits (params `evaluate.*`),
and on the every-colour sets of data/palette (`valid_palette`, `test_palette`) when they exist.

models/<name>/ + data/prepared + data/palette -> metrics/eval.json = {model: {split: {acc, aligned_acc,
conflict_acc, worst_group_acc, dp_gap, eo_gap, n_groups, min_group_size}}} (definitions in
`diffinject.models.evaluation`; the group counts say how many images each group metric rests on: read group
metrics on the *_palette splits, ~50 images per group, not on the prepared ones, ~5) and one
confusion-matrix plot per model and split, metrics/plots/confusion/<model>_<split>.csv (rows
actual,predicted; DVC template `confusion`). A listed model that is missing is an error naming the stage
that writes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffinject.config import StageParams, check_at_least
from diffinject.data.manifest import read_manifest
from diffinject.data.tensors import load_split, num_classes_of
from diffinject.errors import DiffinjectError
from diffinject.fsutil import atomic_dir, write_json
from diffinject.models import autoencoder, disent_net
from diffinject.models.checkpoint import WEIGHTS_NAME, load_classifier
from diffinject.models.evaluation import classification_metrics, group_sizes
from diffinject.models.trainer import TrainerConfig
from diffinject.models.training import predict_logits
from diffinject.stages.paths import METRICS, MODEL_STAGES, PALETTE, PLOTS, PREPARED, missing_model_hint, model_dir

SECTION = "evaluate"
EVAL_SPLITS = ("valid", "test")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class EvaluateConfig:
    models: list[str] = field(default_factory=lambda: list(MODEL_STAGES))  # folders under models/
    splits: list[str] = field(default_factory=lambda: list(EVAL_SPLITS))
    batch_size: int = 1024  # inference batch

    def check(self) -> None:
        if not self.models:
            raise DiffinjectError(f"params '{SECTION}.models': empty (expected model folder names under models/)")
        for name in self.models:
            if not _MODEL_NAME.match(name):
                raise DiffinjectError(f"params '{SECTION}.models': {name!r} is not a folder name under models/")
        for split in self.splits:
            if split not in EVAL_SPLITS:
                raise DiffinjectError(f"params '{SECTION}.splits': got {split!r}, expected some of {', '.join(EVAL_SPLITS)}")
        check_at_least(self, SECTION, 1, "batch_size")


PARAMS = StageParams({"trainer": TrainerConfig, SECTION: EvaluateConfig}, seed=False)


def _bias_columns(rows: pd.DataFrame) -> tuple[np.ndarray | None, np.ndarray | None]:
    """bias and aligned arrays of a split, or None when any row lacks them (unlabelled data)."""
    bias = None if rows["bias"].isna().any() else rows["bias"].to_numpy(dtype=np.int64)
    aligned = None if rows["aligned"].isna().any() else rows["aligned"].to_numpy(dtype=bool)
    return bias, aligned


def _print_table(results: dict[str, dict[str, dict[str, float]]]) -> None:
    keys = ("acc", "aligned_acc", "conflict_acc", "worst_group_acc", "dp_gap", "eo_gap")
    print(f"{'model':<13} {'split':<13} " + " ".join(f"{k:>15}" for k in keys))
    for model, splits in results.items():
        for split, values in splits.items():
            cells = " ".join(f"{values[k]:>15.4f}" if k in values else f"{'-':>15}" for k in keys)
            print(f"{model:<13} {split:<13} {cells}")


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    p = PARAMS.load(params)
    cfg, trainer_cfg = p.evaluate, p.trainer
    for name in cfg.models:  # fail before any work when a model is missing
        weights = model_dir(root, name) / WEIGHTS_NAME
        if not weights.is_file():
            raise DiffinjectError(
                f"{weights}: model not found ({missing_model_hint(name)}, or drop '{name}' from params '{SECTION}.models')"
            )
    prepared = root / PREPARED
    manifest = read_manifest(prepared)
    num_classes = num_classes_of(manifest)
    # split name -> (images, the manifest rows of those images, in the same order)
    splits = {split: (load_split(prepared, split, manifest), manifest[manifest["split"] == split])
              for split in cfg.splits}
    palette = read_manifest(root / PALETTE) if (root / PALETTE).is_dir() else None
    for split in cfg.splits:
        if palette is not None and (palette["split"] == split).any():
            splits[f"{split}_palette"] = (load_split(root / PALETTE, split, palette), palette[palette["split"] == split])

    results: dict[str, dict[str, dict[str, float]]] = {}
    confusion: dict[str, pd.DataFrame] = {}
    for name in cfg.models:
        shape = next(iter(splits.values()))[0].shape
        net, _, _ = load_classifier(model_dir(root, name), num_classes=num_classes, image_shape=shape,
                                    missing_hint=missing_model_hint(name), architectures=(autoencoder, disent_net))
        results[name] = {}
        for split, (data, rows) in splits.items():
            pred = predict_logits(net, data, cfg.batch_size, trainer_cfg).argmax(1).numpy()
            target = data.targets.numpy()
            bias, aligned = _bias_columns(rows)
            results[name][split] = classification_metrics(pred, target, num_classes, bias, aligned)
            if bias is not None:
                results[name][split].update(group_sizes(target, bias))
            confusion[f"{name}_{split}"] = pd.DataFrame({"actual": target, "predicted": pred})

    write_json(root / METRICS / "eval.json", results)
    with atomic_dir(root / PLOTS / "confusion") as tmp:
        for key, rows in confusion.items():
            rows.to_csv(tmp / f"{key}.csv", index=False)
    _print_table(results)
    return results
