"""Data validation of a prepared dataset with great-expectations (1.x, ephemeral context).

The manifest is joined with per-image statistics (exists, inside the root, decodes, size, channels)
and checked table by table: the whole manifest, each split, and the per-split class counts. Each check
is one expectation with a short name, so a failure reads as one line.

Where the bias mechanism of a grey source is known (`info.json`'s `bias`), the bias label is also read
back from the pixels: the stroke colour (colour) or the background colour (background) must be the
label's palette colour. Corruptions are not read back (that takes a classifier); the report says so and
the labels are checked by the conflict fractions alone.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from diffinject.data.bias import measure_bias
from diffinject.data.manifest import SPLITS

STAT_THREADS = 4
MAX_EXAMPLES = 3  # offending files named per failed check
# Share of images whose bias label must be read back from their pixels. Not 1: on Fashion-MNIST 2.4 % of
# stroke-coloured items never reach full brightness (a dark coat), and their dimmed colour lies nearer
# another palette colour. A label/image mix-up reads ~10 %.
MIN_BIAS_FROM_PIXELS = 0.95


@dataclass
class ValidateConfig:
    conflict_tolerance: float = 0.2  # relative tolerance on the measured conflict fraction
    max_class_imbalance: float = 1.5  # largest / smallest class count allowed in valid and test


@dataclass
class Check:
    name: str
    table: str
    expectation: str
    success: bool
    observed: Any = None


@dataclass
class ValidationReport:
    checks: list[Check]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return all(c.success for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.success]

    def to_json(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "n_checks": len(self.checks),
            "n_failed": len(self.failed),
            **self.summary,
            "checks": {c.name: c.success for c in self.checks},
            "failures": {c.name: f"{c.expectation} on {c.table}: observed {c.observed}" for c in self.failed},
        }


def _stat_one(root: Path, rel: str, mechanism: str | None = None) -> dict[str, Any]:
    path = (root / rel).resolve()
    stats: dict[str, Any] = dict(inside_root=path.is_relative_to(root), exists=path.is_file(), readable=False,
                                 height=None, width=None, channels=None, mean=None, bias_measured=None)
    if not (stats["inside_root"] and stats["exists"]):
        return stats
    try:
        with Image.open(path) as img:
            arr = np.asarray(img)
    except (OSError, UnidentifiedImageError, SyntaxError):
        return stats  # reported by the `images_decode` expectation, with the file named there
    stats.update(readable=True, height=arr.shape[0], width=arr.shape[1],
                 channels=1 if arr.ndim == 2 else arr.shape[2], mean=float(arr.mean()))
    if mechanism is not None and arr.ndim == 3 and arr.shape[2] == 3:  # other shapes fail channels_uniform
        measured = measure_bias(arr[None], mechanism)
        stats["bias_measured"] = None if measured is None else int(measured[0])
    return stats


def image_stats(root: Path, manifest: pd.DataFrame, mechanism: str | None = None) -> pd.DataFrame:
    """The manifest plus one row of statistics per image (decoded in a few threads); with a bias
    `mechanism`, also the bias label read back from the pixels where it can be (`bias_measured`)."""
    root = root.resolve()
    with ThreadPoolExecutor(STAT_THREADS) as pool:
        rows = list(tqdm(pool.map(lambda rel: _stat_one(root, str(rel), mechanism), manifest["path"]),
                         total=len(manifest), desc="validate: reading images", unit="img"))
    stats = pd.DataFrame(rows, index=manifest.index)
    out = pd.concat([manifest, stats], axis=1)
    out["conflict"] = (~out["aligned"].astype("boolean")).astype("Float64")
    out["bias_measured"] = out["bias_measured"].astype("Int64")
    return out


class _Runner:
    """Validates dataframes against expectations in one ephemeral great-expectations context."""

    def __init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.source = self.context.data_sources.add_pandas("prepared")
        self.checks: list[Check] = []

    def run(self, table: str, df: pd.DataFrame, expectations: dict[str, Any]) -> None:
        asset = self.source.add_dataframe_asset(name=table)
        batch = asset.add_batch_definition_whole_dataframe(table).get_batch(batch_parameters={"dataframe": df})
        suite = self.gx.ExpectationSuite(name=table)
        for expectation in expectations.values():
            suite.add_expectation(expectation)
        result = batch.validate(suite)
        for name, res in zip(expectations, result.results):
            observed = res.result.get("observed_value")
            if observed is None and not res.success:
                observed = {k: res.result.get(k) for k in ("unexpected_count", "partial_unexpected_list", "partial_missing_list")
                            if res.result.get(k) not in (None, [])}
                rows = res.result.get("partial_unexpected_index_list") or []
                if "path" in df.columns and rows:
                    observed["files"] = [str(df.loc[i, "path"]) for i in rows[:MAX_EXAMPLES]]
            kwargs = {k: v for k, v in res.expectation_config.kwargs.items() if k != "batch_id"}
            args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
            self.checks.append(Check(name, table, f"{res.expectation_config.type}({args})", bool(res.success), _plain(observed)))


def _plain(value: Any) -> Any:
    """JSON-friendly copy of an observed value (numpy scalars -> Python)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _bias_from_pixels(runner: _Runner, df: pd.DataFrame, mechanism: str | None) -> dict[str, Any]:
    """Check that the bias labels can be read back from the pixels; the report's note on it."""
    E = runner.gx.expectations
    if mechanism == "corruption":
        return {"checked": False, "why": "corruptions are not read back from pixels; labels checked by the conflict fractions"}
    if mechanism not in ("colour", "background"):
        return {"checked": False, "why": f"no bias mechanism to read back ({mechanism or 'info.json names none'})"}
    measured = df[df["bias_measured"].notna() & df["bias"].notna()]
    if measured.empty:
        return {"checked": False, "why": "no readable RGB image"}
    agree = (measured["bias_measured"] == measured["bias"]).astype("float64").rename("bias_read_back").to_frame()
    runner.run("bias_pixels", agree, {
        "bias_matches_pixels": E.ExpectColumnMeanToBeBetween(column="bias_read_back", min_value=MIN_BIAS_FROM_PIXELS),
    })
    return {"checked": True, "agreement": float(agree["bias_read_back"].mean())}


def validate_prepared(root: Path, manifest: pd.DataFrame, n_classes: int, expected_conflict_pct: float | None,
                      cfg: ValidateConfig, mechanism: str | None = None) -> ValidationReport:
    """Check a prepared dataset; `expected_conflict_pct` None skips the skew check. `mechanism` (data.bias
    of a grey source, from info.json) adds the check that colour / background bias labels match the
    pixels; None or "folder" skips it."""
    E = __import__("great_expectations").expectations
    df = image_stats(root, manifest, mechanism if mechanism in ("colour", "background") else None)
    runner = _Runner()
    has_bias = bool(df["bias"].notna().all()) and len(df) > 0
    readable = df[df["readable"]]
    first = readable.iloc[0] if len(readable) else None
    runner.run("manifest", df, {
        "ids_unique": E.ExpectColumnValuesToBeUnique(column="id"),
        "splits_known": E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        "paths_inside_root": E.ExpectColumnValuesToBeInSet(column="inside_root", value_set=[True]),
        "paths_exist": E.ExpectColumnValuesToBeInSet(column="exists", value_set=[True]),
        "images_decode": E.ExpectColumnValuesToBeInSet(column="readable", value_set=[True]),
        "targets_in_range": E.ExpectColumnValuesToBeBetween(column="target", min_value=0, max_value=n_classes - 1),
        "image_height_uniform": E.ExpectColumnUniqueValueCountToBeBetween(column="height", min_value=1, max_value=1),
        "image_width_uniform": E.ExpectColumnUniqueValueCountToBeBetween(column="width", min_value=1, max_value=1),
        "image_channels_uniform": E.ExpectColumnUniqueValueCountToBeBetween(column="channels", min_value=1, max_value=1),
        "images_not_blank": E.ExpectColumnValuesToBeBetween(column="mean", min_value=0, max_value=255, strict_min=True),
    })
    if has_bias:
        runner.run("manifest_bias", df, {
            "bias_in_range": E.ExpectColumnValuesToBeBetween(column="bias", min_value=0, max_value=n_classes - 1),
            "aligned_not_null": E.ExpectColumnValuesToNotBeNull(column="aligned"),
        })
    summary: dict[str, Any] = {
        "n_images": {s: int((df["split"] == s).sum()) for s in SPLITS},
        "n_classes": n_classes,
        "image": None if first is None else {k: int(first[k]) for k in ("height", "width", "channels")},
    }
    conflict_fraction = {}
    for split in SPLITS:
        part = df[df["split"] == split]
        runner.run(split, part, {
            f"{split}_has_every_class": E.ExpectColumnDistinctValuesToEqualSet(column="target", value_set=list(range(n_classes))),
        })
        if has_bias and len(part):
            conflict_fraction[split] = float(part["conflict"].mean())
            tol = cfg.conflict_tolerance
            # Check the minority group's share, where a relative tolerance is tight: the conflicting
            # samples of the skewed train split, the aligned samples of an unbiased split (1 / C).
            if split == "train" and expected_conflict_pct is not None:
                column, want = "conflict", expected_conflict_pct / 100
            elif split != "train":
                column, want = "aligned_share", 1 / n_classes
            else:
                column = None
            if column is not None:
                runner.run(f"{split}_skew", part.assign(aligned_share=1 - part["conflict"]), {
                    f"{split}_{column.split('_')[0]}_fraction": E.ExpectColumnMeanToBeBetween(
                        column=column, min_value=want * (1 - tol), max_value=want * (1 + tol)),
                })
        if split != "train" and len(part):
            counts = part["target"].value_counts().rename("count").to_frame()
            counts["imbalance"] = counts["count"].max() / counts["count"]
            runner.run(f"{split}_classes", counts, {
                f"{split}_classes_balanced": E.ExpectColumnValuesToBeBetween(column="imbalance", max_value=cfg.max_class_imbalance),
            })
    if has_bias:
        summary["bias_mechanism"] = mechanism
        summary["bias_from_pixels"] = _bias_from_pixels(runner, df, mechanism)
        summary["conflict_fraction"] = conflict_fraction
        if expected_conflict_pct is not None:
            summary["expected_conflict_fraction"] = expected_conflict_pct / 100
    return ValidationReport(runner.checks, summary)
