"""What dvc.lock says about a pipeline run's data: the DVC md5 of every data set and model it versions,
and its data sets as MLflow dataset inputs (the UI's Datasets column).

| what | keys |
|---|---|
| DVC md5 of every data set and model (dvc.lock outs, not metrics/) | `dvc.<path>.md5`: `dvc.data/prepared.md5` |
| every data set of dvc.lock (outs under data/) | name = DVC path, digest = md5, context = the stage that wrote it |
| the data sets a training stage read (its deps under data/) | as above, context `training` |

dvc.lock is read as YAML: this package does not import DVC.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Dataset, DatasetInput, InputTag

from diffinject.errors import DiffinjectError, first_line

DVC_LOCK = Path("dvc.lock")
# dvc.lock outs under these prefixes are logged as values and artifacts, not as data hashes.
NOT_DATA_PREFIXES = ("metrics/",)
# DVC-versioned data sets are MLflow dataset inputs (the UI's Datasets column): outs/deps under this prefix.
DATA_PREFIX = "data/"
DATASET_SOURCE_TYPE = "dvc"
DATASET_CONTEXT = "mlflow.data.context"  # MLflow's input tag shown next to the dataset


def read_lock(lock_path: Path) -> dict[str, Any]:
    """The `stages` of dvc.lock; a pipeline run reads it once for its hashes and data sets."""
    if not lock_path.is_file():
        raise DiffinjectError(f"{lock_path}: not found (run the pipeline with `dvc repro` so it records its data hashes)")
    try:
        return (yaml.safe_load(lock_path.read_text()) or {}).get("stages") or {}
    except yaml.YAMLError as exc:
        raise DiffinjectError(f"{lock_path}: not valid YAML ({first_line(exc)})") from exc


def dvc_hashes(lock_path: Path, stages: dict[str, Any] | None = None) -> dict[str, str]:
    """`dvc.<path>.md5` of every out in dvc.lock except metrics and plots (module docstring); `stages`:
    the lock as read_lock already read it."""
    hashes: dict[str, str] = {}
    for stage_name, stage in (read_lock(lock_path) if stages is None else stages).items():
        for out in stage.get("outs") or []:
            path = out.get("path", "")
            if path.startswith(NOT_DATA_PREFIXES):
                continue
            if "md5" not in out:
                raise DiffinjectError(f"{lock_path}: stage {stage_name!r} out {path!r} has no md5")
            hashes[f"dvc.{path}.md5"] = out["md5"]
    return hashes


def _dataset(path: str, md5: str, context: str) -> DatasetInput:
    return DatasetInput(Dataset(name=path, digest=md5, source_type=DATASET_SOURCE_TYPE, source=path),
                        tags=[InputTag(DATASET_CONTEXT, context)])


def pipeline_datasets(stages: dict[str, Any]) -> list[DatasetInput]:
    """Every data set dvc.lock versions (outs under data/), its context the stage that wrote it."""
    return [_dataset(out["path"], out["md5"], name) for name, stage in stages.items()
            for out in stage.get("outs") or [] if str(out.get("path", "")).startswith(DATA_PREFIX) and "md5" in out]


def training_datasets(stages: dict[str, Any], model: str) -> list[DatasetInput]:
    """The data sets (deps under data/) of the dvc.lock stage whose out is models/<model>."""
    for stage in stages.values():
        if any(out.get("path") == f"models/{model}" for out in stage.get("outs") or []):
            return [_dataset(dep["path"], dep["md5"], "training") for dep in stage.get("deps") or []
                    if str(dep.get("path", "")).startswith(DATA_PREFIX) and "md5" in dep]
    return []
