"""Stage `validate`: great-expectations checks of data/prepared -> metrics/validation.json; a broken
dataset fails the stage with one line per failed check. Bias labels are also read back from the pixels
where the mechanism (info.json `bias`) allows it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from diffinject.config import StageParams, slice_of
from diffinject.data.manifest import INFO_NAME, read_manifest
from diffinject.data.prepare import DataConfig
from diffinject.data.validation import ValidateConfig, validate_prepared
from diffinject.errors import DiffinjectError
from diffinject.fsutil import write_json
from diffinject.stages.paths import METRICS, PREPARED

# The measured conflict fraction is checked against the one asked for.
PARAMS = StageParams({"data": slice_of(DataConfig, "conflict_pct"), "validate": ValidateConfig}, seed=False)


def run(params: dict, root: Path = Path(".")) -> dict:
    p = PARAMS.load(params)
    data_dir, metrics_path = root / PREPARED, root / METRICS / "validation.json"
    manifest = read_manifest(data_dir)
    info_path = data_dir / INFO_NAME
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    n_classes = int(info.get("n_classes") or manifest["target"].max() + 1)
    # The mechanism prepare drew the bias with (data.bias) comes from info.json, not params: it describes
    # the data on disk, and validate re-runs on data/prepared changing anyway.
    report = validate_prepared(data_dir, manifest, n_classes, p.data.conflict_pct, p.validate, mechanism=info.get("bias"))
    result = report.to_json()
    write_json(metrics_path, result)
    for check in report.failed:
        print(f"validate: FAILED {check.name}: {check.expectation} on {check.table}, observed {check.observed}", file=sys.stderr)
    if not report.success:
        raise DiffinjectError(
            f"{data_dir}: {len(report.failed)} of {len(report.checks)} data checks failed (details in {metrics_path})"
        )
    fractions = result.get("conflict_fraction", {})
    print(f"validate: {len(report.checks)} checks passed; conflict fraction {fractions}")
    return result
