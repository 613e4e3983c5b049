"""metrics/inject.json's quality part for a pool: the evaluation-only judges, the vanilla model and the
prepared test split read from this repository, handed to diffusion/synthetic_quality.pool_report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from diffinject.data.manifest import INFO_NAME
from diffinject.data.tensors import ImageTensors, load_split, num_classes_of
from diffinject.diffusion.synthetic_quality import pool_report, to_grey
from diffinject.models.checkpoint import load_classifier
from diffinject.models.trainer import TrainerConfig
from diffinject.models.training import predict_logits
from diffinject.stages.paths import PREPARED, model_dir

# Sources whose bias is the LfF colour we applied, so the measured colour is the bias attribute.
COLOUR_BIASED_SOURCES = ("mnist5k", "idx")


def quality_report(root: Path, manifest: pd.DataFrame, pool: pd.DataFrame, images: torch.Tensor,
                   trainer_cfg: TrainerConfig) -> dict[str, Any]:
    """metrics/inject.json's quality part, from the evaluation-only judges and the vanilla model where
    they exist (a missing one is noted). `manifest` is data/prepared's (already read by the stage)."""
    prepared = root / PREPARED
    info = json.loads((prepared / INFO_NAME).read_text()) if (prepared / INFO_NAME).is_file() else {}
    n_classes, shape = num_classes_of(manifest), tuple(images.shape[1:])
    targets = torch.tensor(pool["target"].to_numpy())  # a copy: the manifest's arrays are read-only views
    judged = bias = vanilla = reference = None
    notes = []
    if (model_dir(root, "judge") / "model.json").is_file():
        judge, _, meta = load_classifier(model_dir(root, "judge"), num_classes=n_classes, image_shape=shape)
        view = to_grey(images) if meta.get("view", "grey") == "grey" else images  # what the judge was trained on
        judged = predict_logits(judge, ImageTensors(view, targets, torch.tensor(pool["id"].to_numpy()), "synthetic"),
                                1024, trainer_cfg).argmax(1).numpy()
    else:
        notes.append("label_fidelity: no models/judge (run train_judge)")
    if (model_dir(root, "bias_judge") / "model.json").is_file():
        bias_judge, _, _ = load_classifier(model_dir(root, "bias_judge"), image_shape=shape)
        bias = predict_logits(bias_judge, ImageTensors(images, targets, torch.tensor(pool["id"].to_numpy()), "synthetic"),
                              1024, trainer_cfg).argmax(1).numpy()
    else:
        notes.append("bias_conflict_fraction: no models/bias_judge (run train_judge; folder sources need bias labels)")
    if (model_dir(root, "vanilla") / "model.json").is_file():
        vanilla, _, _ = load_classifier(model_dir(root, "vanilla"), num_classes=n_classes, image_shape=shape)
        reference = load_split(prepared, "test", manifest).images
    else:
        notes.append("frechet_distance: no models/vanilla (run vanilla)")
    colour_biased = info.get("source") in COLOUR_BIASED_SOURCES and info.get("bias", "colour") == "colour"
    report = pool_report(images, pool, n_classes, colour_biased, judged, vanilla, reference,
                         bias, None if bias is None else aligned_bias(manifest))
    if notes:
        report["not_measured"] = notes
    return report



def aligned_bias(manifest: pd.DataFrame) -> np.ndarray:
    """(n_classes,) the bias value each class's aligned train samples carry (evaluation only: the manifest's bias labels, read here and never in the library)."""
    train = manifest[(manifest["split"] == "train") & manifest["aligned"].fillna(False).astype(bool)]
    by_class = train.groupby("target")["bias"].agg(lambda b: int(b.mode().iloc[0]))
    return np.array([by_class.get(c, -1) for c in range(num_classes_of(manifest))])
