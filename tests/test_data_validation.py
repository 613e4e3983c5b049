"""The validate stage: passes on good data, names each broken expectation on bad data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from diffinject import cli
from diffinject.data.manifest import read_manifest, write_manifest
from diffinject.data.validation import ValidateConfig, validate_prepared


def _validate(root: Path, pct: float = 1.0):
    m = read_manifest(root)
    return validate_prepared(root, m, n_classes=10, expected_conflict_pct=pct, cfg=ValidateConfig())


def test_good_data_passes_and_reports_fraction(prepared_mnist):
    report = _validate(prepared_mnist)
    assert report.success, report.to_json()["failures"]
    out = report.to_json()
    assert out["conflict_fraction"] == {"train": 0.01, "valid": 0.9, "test": 0.9}
    assert out["image"] == {"height": 28, "width": 28, "channels": 3}


def test_wrong_expected_pct_fails(prepared_mnist):
    report = _validate(prepared_mnist, pct=5.0)
    assert [c.name for c in report.failed] == ["train_conflict_fraction"]
    assert report.failed[0].observed == pytest.approx(0.01)


def _break(root: Path, how: str) -> None:
    m = read_manifest(root)
    if how == "duplicate_id":
        m.loc[5, "id"] = m.loc[4, "id"]
    elif how == "missing_file":
        (root / m.loc[10, "path"]).unlink()
    elif how == "escaping_path":
        m.loc[11, "path"] = "../../etc/passwd"
    elif how == "label_out_of_range":
        m.loc[12, "target"] = 42
    elif how == "missing_class":
        m = m[~((m["split"] == "test") & (m["target"] == 3))]
    elif how == "grey_image":
        from PIL import Image
        Image.new("L", (28, 28), 9).save(root / m.loc[13, "path"])
    elif how == "corrupt_image":
        (root / m.loc[14, "path"]).write_bytes(b"nope")
    write_manifest(m, root)


@pytest.mark.parametrize(
    "how, expected",
    [
        ("duplicate_id", {"ids_unique"}),
        ("missing_file", {"paths_exist", "images_decode"}),
        ("escaping_path", {"paths_inside_root", "images_decode"}),
        ("label_out_of_range", {"targets_in_range", "train_has_every_class"}),
        ("missing_class", {"test_has_every_class"}),
        ("grey_image", {"image_channels_uniform"}),
        ("corrupt_image", {"images_decode"}),
    ],
)
def test_broken_data_fails_the_named_check(prepared_copy, how, expected):
    _break(prepared_copy, how)
    report = _validate(prepared_copy)
    assert expected <= {c.name for c in report.failed}
    assert not report.success


def test_failure_names_the_file(prepared_copy):
    _break(prepared_copy, "corrupt_image")
    bad = read_manifest(prepared_copy).loc[14, "path"]
    check = next(c for c in _validate(prepared_copy).failed if c.name == "images_decode")
    assert check.observed["files"] == [bad]


def test_stage_exits_nonzero_with_one_line_per_failure(prepared_copy, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    shutil.move(prepared_copy, work / "data" / "prepared")
    _break(work / "data" / "prepared", "duplicate_id")
    (work / "params.yaml").write_text(yaml.safe_dump({"data": {"conflict_pct": 2.0}}))
    monkeypatch.chdir(work)
    assert cli.main(["validate"]) == 1
    err = capsys.readouterr().err.splitlines()
    failed = [ln for ln in err if ln.startswith("validate: FAILED")]
    assert {ln.split()[2].rstrip(":") for ln in failed} == {"ids_unique", "train_conflict_fraction"}
    assert sum(ln.startswith("error:") for ln in err) == 1
    report = json.loads((work / "metrics" / "validation.json").read_text())
    assert report["success"] is False and report["n_failed"] == 2


def test_unbiased_check_catches_biased_test_split(prepared_copy):
    m = read_manifest(prepared_copy)
    test = m["split"] == "test"
    conflict_rows = m.index[test & ~m["aligned"]]
    m = m.drop(conflict_rows[: len(conflict_rows) // 2])  # test becomes colour-biased
    write_manifest(m, prepared_copy)
    names = {c.name for c in _validate(prepared_copy).failed}
    assert "test_aligned_fraction" in names
