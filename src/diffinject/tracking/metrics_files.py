"""Reading what the stages wrote under metrics/: the JSON metrics files as MLflow metric keys, one
metric a caller needs (an error when it was never written), and the per-epoch training curves
metrics/plots/train/<name>.csv.

Keys: metrics/eval.json's numeric leaves under their own dotted path (`debiased.test.acc`); every other
metrics/<name>.json's under `<name>/<dotted path>` (`inject/label_fidelity`). Only numbers are metrics:
booleans and strings are skipped.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from mlflow.entities import Metric

from diffinject.errors import DiffinjectError

METRICS_DIR = Path("metrics")
PLOTS_DIR = METRICS_DIR / "plots"
CURVES_DIR = PLOTS_DIR / "train"
# metrics/eval.json is the metrics contract (docs/design.md): its paths are the metric keys themselves.
EVAL_FILE = "eval.json"
# Files in metrics/ that describe something else than this pipeline run: the registry's own record
# (written after logging) and a search study's summary (logged in the study's run).
NOT_PIPELINE_METRICS = ("register.json", "search.json")
CURVE_STEP = "epoch"


class MissingMetricError(DiffinjectError):
    """A metric the registry or the search needs was never written: stop, never compare or optimise None."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DiffinjectError(f"{path}: not valid JSON ({exc})") from exc


def file_metrics(path: Path) -> dict[str, float]:
    """The numeric leaves of one metrics file, under the key scheme of the module docstring."""
    prefix = "" if path.name == EVAL_FILE else f"{path.stem}/"
    flat = flatten(read_json(path))
    return {f"{prefix}{key}": float(value) for key, value in flat.items() if is_number(value)}


def read_metrics(metrics_dir: Path) -> dict[str, float]:
    """Every number of every metrics/*.json of this pipeline run."""
    out: dict[str, float] = {}
    for path in sorted(metrics_dir.glob("*.json")):
        if path.name not in NOT_PIPELINE_METRICS:
            out.update(file_metrics(path))
    return out


def require_metric(metrics: dict[str, float], name: str, metrics_dir: Path, param: str) -> float:
    """metrics[name], or a one-line error: a missing metric is never optimised or compared as None."""
    if name not in metrics:
        model = name.split(".")[0]
        known = sorted(k for k in metrics if k.startswith(f"{model}."))
        raise MissingMetricError(
            f"params '{param}': metric {name!r} not found in {metrics_dir}/{EVAL_FILE} "
            f"(has {', '.join(known[:8]) or 'no metrics of that model'}; run the evaluate stage first)"
        )
    return metrics[name]


def read_curve(path: Path) -> list[dict[str, float]]:
    """Rows of a metrics/plots/train/<name>.csv (one per epoch, with an `epoch` column)."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and CURVE_STEP not in rows[0]:
        raise DiffinjectError(f"{path}: no {CURVE_STEP!r} column (columns: {', '.join(rows[0])})")
    out = []
    for i, row in enumerate(rows):
        try:
            out.append({k: float(v) for k, v in row.items() if v not in ("", None)})
        except ValueError as exc:
            raise DiffinjectError(f"{path}: row {i + 2} is not numeric ({exc})") from exc
    return out


def curve_metrics(rows: list[dict[str, float]], timestamp_ms: int) -> list[Metric]:
    """A curve's rows as MLflow metrics, one step per epoch (the `epoch` column is the step, not a metric)."""
    return [Metric(key, value, timestamp_ms, int(row[CURVE_STEP]))
            for row in rows for key, value in row.items() if key != CURVE_STEP]
