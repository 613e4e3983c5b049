import subprocess
import sys

from diffinject import cli


def test_help_lists_every_stage_with_a_line():
    out = subprocess.run([sys.executable, "-m", "diffinject", "--help"], capture_output=True, text=True, check=True).stdout
    for name, (_, help_text) in cli.STAGES.items():
        assert name in out and help_text[:30] in out


def test_stage_modules_have_main():
    import importlib

    for module, _ in cli.STAGES.values():
        assert callable(importlib.import_module(f"diffinject.stages.{module}").main)


def test_missing_params_file_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["prepare", "--params", "nope.yaml"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: nope.yaml: params file not found (expected a YAML file such as params.yaml)"]
