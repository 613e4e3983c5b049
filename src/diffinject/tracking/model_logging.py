"""Logging a classifier as an MLflow model into the active run: its input example and signature, its
serialization format, and the pinned pip requirements."""

from __future__ import annotations

import mlflow
import mlflow.pytorch
import numpy as np
import torch
import torchvision
from mlflow.models.model import ModelInfo
from torch import nn

from diffinject.errors import DiffinjectError
from diffinject.tracking.registry_config import SECTION

MODEL_ARTIFACT = "model"
SERIALIZATION_FORMATS = ("pickle", "pt2")


def pip_requirements(serialization_format: str) -> list[str]:
    """Pinned to this environment (without local build tags such as +cpu), so MLflow does not infer them
    by importing the model in a subprocess (about 15 s per log). A pickled network also needs
    torchvision, which diffinject.models.networks imports."""
    reqs = [f"torch=={torch.__version__.split('+')[0]}"]
    if serialization_format == "pickle":
        reqs.append(f"torchvision=={torchvision.__version__.split('+')[0]}")
    return reqs


def log_classifier(net: nn.Module, example: np.ndarray, serialization_format: str) -> ModelInfo:
    """Log `net` (float images in [0, 1], (B, C, H, W) -> logits (B, num_classes)) into the active run.
    `example` (a few real images, float32) becomes the input example and signature, batch dim free."""
    if serialization_format not in SERIALIZATION_FORMATS:
        raise DiffinjectError(f"params '{SECTION}.serialization_format': got {serialization_format!r}, "
                              f"expected one of {', '.join(SERIALIZATION_FORMATS)}")
    if example.dtype != np.float32 or example.ndim != 4:
        raise DiffinjectError(f"input example: got {example.dtype} of shape {example.shape}, expected float32 (B, C, H, W)")
    return mlflow.pytorch.log_model(
        net.eval(), name=MODEL_ARTIFACT, input_example=example, serialization_format=serialization_format,
        pip_requirements=pip_requirements(serialization_format),
    )
