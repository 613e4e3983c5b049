"""One source of truth for params: each section's dataclass is its schema, and params.yaml states
exactly its defaults; configs are range-checked when they are built; a stage run with no params is
the stage `dvc repro` runs."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess

import pytest
import yaml

from diffinject.cli import STAGES
from diffinject.config import StageParams, load_params, section, section_class, slice_of
from diffinject.diffusion.injection_params import InjectionParams
from diffinject.errors import DiffinjectError
from tests.conftest import REPO


def committed_params() -> dict:
    """params.yaml as git's index holds it: `dvc exp run -S key=value` leaves its value in the working
    copy (as DVC does), and an experiment must not turn the suite red; a change meant to land is staged
    with its dataclass default. Outside a git checkout, the file itself."""
    try:
        text = subprocess.run(["git", "show", ":params.yaml"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return load_params(REPO / "params.yaml")
    return yaml.safe_load(text)


PARAMS_YAML = committed_params()


def stage_params() -> dict[str, StageParams]:
    """stage name -> its PARAMS, for every command of the CLI that reads params."""
    found = {}
    for name, (module, _) in STAGES.items():
        declared = getattr(importlib.import_module(f"diffinject.stages.{module}"), "PARAMS", None)
        if declared is not None:
            found[name] = declared
    return found


def schemas() -> dict[str, type]:
    """section -> its one schema class, collected from every stage's PARAMS."""
    found: dict[str, type] = {}
    for stage, declared in stage_params().items():
        for name, cls in declared.sections.items():
            schema = section_class(cls)
            assert found.setdefault(name, schema) is schema, \
                f"section {name!r}: stage {stage} reads it as {schema.__name__}, another stage as {found[name].__name__}"
    return found


def plain(value):
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def test_every_command_declares_what_it_reads():
    missing = [name for name, (module, _) in STAGES.items()
               if not hasattr(importlib.import_module(f"diffinject.stages.{module}"), "PARAMS")]
    assert not missing, f"stages without PARAMS: {missing}"


def test_params_yaml_has_exactly_the_sections_the_stages_read():
    assert set(PARAMS_YAML) - {"seed"} == set(schemas())


@pytest.mark.parametrize("name", sorted(schemas()))
def test_params_yaml_states_the_dataclass_defaults(name):
    defaults = {k: plain(v) for k, v in dataclasses.asdict(schemas()[name]()).items()}
    in_yaml = {k: plain(v) for k, v in PARAMS_YAML[name].items()}
    assert sorted(in_yaml) == sorted(defaults), f"params.yaml '{name}' keys differ from {schemas()[name].__name__}'s"
    differ = {k: (in_yaml[k], defaults[k]) for k in defaults if in_yaml[k] != defaults[k]}
    assert not differ, f"params.yaml '{name}' vs {schemas()[name].__name__} defaults (yaml, dataclass): {differ}"


@pytest.mark.parametrize("stage", sorted(stage_params()))
def test_a_stage_with_no_params_reads_what_params_yaml_says(stage):
    declared = stage_params()[stage]
    assert declared.load({}) == declared.load(PARAMS_YAML)


def test_range_checks_run_when_a_config_is_built():
    with pytest.raises(DiffinjectError, match=r"injection.h_gamma.*\[0, 1\]"):
        section({"injection": {"h_gamma": 1.5}}, "injection", InjectionParams)
    steps = slice_of(InjectionParams, "n_inv_step")
    with pytest.raises(DiffinjectError, match=r"injection.n_inv_step': got 1, expected >= 2"):
        section({"injection": {"n_inv_step": 1}}, "injection", steps)


def test_a_slice_reads_its_keys_only_but_still_refuses_a_typo():
    steps = slice_of(InjectionParams, "n_inv_step", "n_gen_step")
    cfg = section({"injection": {"n_inv_step": 7, "h_gamma": 0.2}}, "injection", steps)
    assert (cfg.n_inv_step, cfg.n_gen_step) == (7, InjectionParams().n_gen_step)
    assert not hasattr(cfg, "h_gamma")
    with pytest.raises(DiffinjectError, match=r"injection.h_gama': unknown key"):
        section({"injection": {"h_gama": 0.2}}, "injection", steps)
    assert StageParams({"injection": steps}, seed=False).keys() == ["injection.n_inv_step", "injection.n_gen_step"]
