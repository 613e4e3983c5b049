"""The end-of-run table: one row per model, the registry's decision, where the pictures are."""

from __future__ import annotations

import json

import pytest

from diffinject.cli import main as cli_main
from diffinject.errors import DiffinjectError
from diffinject.stages import summary


def write_metrics(root, with_register: bool = True) -> None:
    metrics = root / "metrics"
    metrics.mkdir(parents=True)
    eval_json = {
        "vanilla": {"valid": {"acc": 0.41}, "test": {"acc": 0.386, "conflict_acc": 0.318, "worst_group_acc": 0.0},
                    "test_palette": {"worst_group_acc": 0.05}},
        "debiased_lff": {"valid": {"acc": 0.842}, "test": {"acc": 0.802, "conflict_acc": 0.784}},
    }
    (metrics / "eval.json").write_text(json.dumps(eval_json))
    if with_register:
        (metrics / "register.json").write_text(json.dumps({
            "model_name": "diffinject-debiased", "version": 3, "model": "debiased_lff", "metric": "debiased_lff.valid.acc",
            "value": 0.842, "alias": "champion", "reason": "first version"}))


def test_one_row_per_model_and_the_registry_decision(tmp_path, capsys):
    write_metrics(tmp_path)
    text = summary.run({}, tmp_path)
    lines = text.splitlines()
    assert lines[0].split() == ["model", "test", "acc", "conflict", "worst", "group", "valid", "acc"]
    assert lines[2].split() == ["vanilla", "0.386", "0.318", "0.050", "0.410"]  # worst group from the every-colour set
    assert lines[3].split() == ["debiased_lff", "0.802", "0.784", "-", "0.842"]
    assert "registry: diffinject-debiased v3 = debiased_lff (debiased_lff.valid.acc 0.842) -> alias champion" in text
    assert "dvc plots show" in text and capsys.readouterr().out.strip() == text.strip()


def test_before_register_it_says_so_and_without_eval_it_fails_in_one_line(tmp_path, capsys):
    write_metrics(tmp_path, with_register=False)
    assert "registry: no metrics/register.json yet" in summary.run({}, tmp_path)
    with pytest.raises(DiffinjectError, match=r"eval.json: not found \(run `dvc repro evaluate` first\)"):
        summary.run({}, tmp_path / "elsewhere")


def test_the_cli_prints_it(tmp_path, monkeypatch, capsys):
    write_metrics(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["summary"]) == 0
    assert "debiased_lff" in capsys.readouterr().out
