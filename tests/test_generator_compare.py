"""benchmarks/generator_compare.py's bookkeeping: ratios against the first generator and its refusal of a
folder that is not a trained DDPM (the stages it runs are tested on their own)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def generator_compare():
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("generator_compare", REPO / "benchmarks" / "generator_compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_ratios_are_against_the_first_generator_and_skip_missing_figures(generator_compare):
    rows = generator_compare.with_ratios([
        {"recon_judge_acc": 0.8, "recon_reference_acc": 0.7, "pilot_score": 0.4, "label_fidelity": 0.5,
         "faithful_bias_conflict_fraction": 0.0},
        {"recon_judge_acc": 0.6, "recon_reference_acc": 0.7, "pilot_score": None, "label_fidelity": 0.55,
         "faithful_bias_conflict_fraction": 0.3}])
    assert rows[0]["ratio_to_first"]["recon_judge_acc"] == 1.0
    assert rows[1]["ratio_to_first"]["recon_judge_acc"] == 0.75
    assert rows[1]["ratio_to_first"]["label_fidelity"] == 1.1
    assert rows[1]["ratio_to_first"]["pilot_score"] is None  # missing here
    assert rows[1]["ratio_to_first"]["faithful_bias_conflict_fraction"] is None  # zero in the first row


def test_a_folder_without_a_unet_is_refused_before_any_work(generator_compare, tmp_path, capsys):
    with pytest.raises(SystemExit):
        generator_compare.main(["--diffusion", str(tmp_path)])
    assert f"--diffusion {tmp_path}: expected a diffusion folder with unet/config.json" in capsys.readouterr().err
