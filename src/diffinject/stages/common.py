"""Output writing and inputs shared by the classifier stages (the paths they share: stages/paths.py)."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from diffinject.config import StageParams
from diffinject.data.manifest import read_manifest
from diffinject.data.tensors import ImageTensors, load_split, num_classes_of
from diffinject.errors import DiffinjectError, first_line
from diffinject.fsutil import atomic_dir, atomic_file, write_json
from diffinject.models.checkpoint import save_classifier
from diffinject.models.configs import TrainConfig
from diffinject.models.trainer import TrainerConfig
from diffinject.models.training import FitResult, train_classifier
from diffinject.stages.paths import CURVES, METRICS, PREPARED, model_dir


def training_metrics(result: FitResult, epochs: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """metrics/<name>.json: the selected epoch and its train/valid loss and accuracy."""
    chosen = result.selected
    metrics: dict[str, Any] = {"best_epoch": result.best_epoch, "epochs": epochs}
    for split in ("train", "valid"):
        metrics[split] = {m: chosen[f"{split}/{m}"] for m in ("loss", "acc") if f"{split}/{m}" in chosen}
    metrics.update(extra or {})
    return metrics


def write_training_outputs(root: Path, name: str, result: FitResult, cfg: Any, seed: int,
                           extra: dict[str, Any] | None = None, model_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """models/<name>/ (model.pt + model.json), metrics/<name>.json and metrics/plots/train/<name>.csv
    (one row per epoch). `model_info` goes to model.json (DisEnt: `composite`). Only rank zero writes
    under DDP."""
    metrics = training_metrics(result, cfg.epochs, extra)
    if not result.is_global_zero:
        return metrics
    info = {"stage": name, "seed": seed, "params": dataclasses.asdict(cfg), "best_epoch": result.best_epoch,
            **(model_info or {})}
    with atomic_dir(model_dir(root, name)) as tmp:
        save_classifier(tmp, result.state, result.net_config, info)
    # CSV columns `train_loss`, `valid_acc`, ...: plain field names for DVC plots (x: epoch, y: valid_acc).
    rows = [{k.replace("/", "_"): v for k, v in row.items()} for row in result.history]
    columns = sorted({k for row in rows for k in row}, key=lambda k: (k != "epoch", k))
    with atomic_file(root / CURVES / f"{name}.csv") as tmp_csv:
        with tmp_csv.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    write_json(root / METRICS / f"{name}.json", metrics)
    valid = metrics["valid"]
    print(f"{name}: epoch {result.best_epoch}/{cfg.epochs} selected (valid acc {valid['acc']:.4f}), "
          f"trained in {result.seconds:.1f} s -> {model_dir(root, name)}")
    return metrics


@dataclasses.dataclass
class TrainingData:
    train: ImageTensors
    valid: ImageTensors
    num_classes: int


def load_training_data(root: Path) -> TrainingData:
    """The train and valid splits of data/prepared (targets only: no bias labels reach training)."""
    prepared = root / PREPARED
    manifest = read_manifest(prepared)
    return TrainingData(
        train=load_split(prepared, "train", manifest),
        valid=load_split(prepared, "valid", manifest),
        num_classes=num_classes_of(manifest),
    )


def mined_train_rows(train: ImageTensors, conflicts_csv: Path) -> np.ndarray:
    """The rows of `train` whose ids `mine` wrote to `conflicts_csv`, in the file's order (invert's
    contents, upsample's copies)."""
    if not conflicts_csv.is_file():
        raise DiffinjectError(f"{conflicts_csv}: not found (run `python -m diffinject mine` first)")
    try:
        mined = pd.read_csv(conflicts_csv)
    except (OSError, ValueError) as exc:
        raise DiffinjectError(f"{conflicts_csv}: not a readable CSV ({first_line(exc)})") from exc
    if "id" not in mined.columns:
        raise DiffinjectError(f"{conflicts_csv}: no 'id' column (expected the output of the mine stage)")
    if not pd.api.types.is_integer_dtype(mined["id"]):
        raise DiffinjectError(f"{conflicts_csv}: column 'id' must hold integer manifest ids (expected the output of the mine stage)")
    position = {int(i): row for row, i in enumerate(train.ids.tolist())}
    unknown = [int(i) for i in mined["id"] if int(i) not in position]
    if unknown:
        raise DiffinjectError(f"{conflicts_csv}: id {unknown[0]} is not a train image of {train.source} "
                              "(re-run mine after prepare)")
    return np.array([position[int(i)] for i in mined["id"]], dtype=np.int64)


def classifier_params(name: str, config_class: type = TrainConfig) -> StageParams:
    """What a classifier stage reads: its section `name`, `trainer.*` and `seed`."""
    return StageParams({"trainer": TrainerConfig, name: config_class})


def fit(name: str, cfg: Any, loaded: Any, train: ImageTensors, data: TrainingData,
        train_fn: Callable[..., FitResult] = train_classifier, section: str | None = None, **fit_kwargs: Any) -> FitResult:
    """`train_fn` (train_classifier, train_lff, ...) on `train`, selected on `data.valid`, with the
    stage's section `cfg` and its `loaded` trainer and seed. `section` names the params section in
    messages (default `name`); `fit_kwargs` go to `train_fn` (biased_rows, callbacks)."""
    return train_fn(train, data.valid, data.num_classes, cfg, loaded.trainer, loaded.seed, section or name, **fit_kwargs)


def fit_and_write(root: Path, name: str, cfg: Any, loaded: Any, train: ImageTensors, data: TrainingData,
                  train_fn: Callable[..., FitResult] = train_classifier, extra: dict[str, Any] | None = None,
                  model_info: dict[str, Any] | None = None, section: str | None = None, **fit_kwargs: Any) -> dict[str, Any]:
    """The one last step of every classifier stage: `fit`, then models/<name>/, metrics/<name>.json and
    the curve."""
    result = fit(name, cfg, loaded, train, data, train_fn, section, **fit_kwargs)
    return write_training_outputs(root, name, result, cfg, loaded.seed, extra, model_info)
