import dataclasses
import subprocess
import sys

import pytest

from diffinject import cli


def test_help_lists_every_stage_with_a_line():
    out = subprocess.run([sys.executable, "-m", "diffinject", "--help"], capture_output=True, text=True, check=True).stdout
    for name, (_, help_text) in cli.STAGES.items():
        assert name in out and help_text[:30] in out


def test_every_command_module_has_the_one_stage_shape():
    """PARAMS (what it reads) and run(params, root, ...), nothing else for the CLI to call."""
    import importlib
    import inspect

    for module_name, _ in cli.STAGES.values():
        module = importlib.import_module(f"diffinject.stages.{module_name}")
        assert list(inspect.signature(module.run).parameters)[:2] == ["params", "root"], module_name
        assert hasattr(module, "PARAMS") and not hasattr(module, "main"), module_name
        fields = {f.name: f.type for f in dataclasses.fields(module.PARAMS.record())}
        assert fields == {**module.PARAMS.sections, **({"seed": int} if module.PARAMS.seed else {})}, module_name


def test_loaded_params_are_a_frozen_typed_record():
    from diffinject.diffusion.model import DiffusionConfig
    from diffinject.stages import train_diffusion

    loaded = train_diffusion.PARAMS.load({"seed": 3, "diffusion": {"train_steps": 5}})
    assert isinstance(loaded.diffusion, DiffusionConfig) and loaded.diffusion.train_steps == 5 and loaded.seed == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.seed = 4


def test_main_hands_the_parsed_params_file_the_folder_and_the_extra_arguments_to_run(tmp_path, monkeypatch):
    from pathlib import Path

    from diffinject.stages import promote

    calls = []
    monkeypatch.setattr(promote, "run", lambda params, root, **extra: calls.append((params, root, extra)))
    (tmp_path / "p.yaml").write_text("seed: 7\nregistry: {model_name: m}\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["promote", "3", "--params", "p.yaml"]) == 0
    assert calls == [({"seed": 7, "registry": {"model_name": "m"}}, Path("."), {"version": 3})]


def test_missing_params_file_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["prepare", "--params", "nope.yaml"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: nope.yaml: params file not found (expected a YAML file such as params.yaml)"]


def test_cost_log_gets_one_line_per_stage_run_and_none_without_the_variable(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.chdir(tmp_path)
    log = tmp_path / "costs.jsonl"
    monkeypatch.delenv(cli.COST_LOG_ENV, raising=False)
    assert cli.main(["prepare", "--params", "nope.yaml"]) == 1
    assert not log.exists()
    monkeypatch.setenv(cli.COST_LOG_ENV, str(log))
    assert cli.main(["prepare", "--params", "nope.yaml"]) == 1
    assert cli.main(["summary", "--params", "nope.yaml"]) == 1  # no metrics/eval.json here
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["stage"], r["exit"]) for r in rows] == [("prepare", 1), ("summary", 1)]
    assert all(r["seconds"] >= 0 and r["peak_rss_mib"] > 10 for r in rows)  # a Python process holds > 10 MiB


def test_stage_costs_pairs_two_logs_and_flags_what_grew_faster_than_the_data(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("stage_costs", Path(__file__).resolve().parents[1] / "scripts" / "stage_costs.py")
    stage_costs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage_costs)
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    small.write_text('{"stage": "lff", "seconds": 10, "peak_rss_mib": 100, "exit": 0}\n'
                     '{"stage": "inject", "seconds": 1, "peak_rss_mib": 50, "exit": 1}\n'
                     '{"stage": "inject", "seconds": 2, "peak_rss_mib": 50, "exit": 0}\n')
    large.write_text('{"stage": "lff", "seconds": 120, "peak_rss_mib": 300, "exit": 0}\n'
                     '{"stage": "inject", "seconds": 40, "peak_rss_mib": 60, "exit": 0}\n')
    assert stage_costs.main([str(small), str(large), "--data-ratio", "15"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["stage"]: r for r in result["stages"]}
    assert (rows["lff"]["time_ratio"], rows["lff"]["memory_ratio"], rows["lff"]["faster_than_data"]) == (12.0, 3.0, False)
    assert (rows["inject"]["small_s"], rows["inject"]["time_ratio"], rows["inject"]["faster_than_data"]) == (2, 20.0, True)
