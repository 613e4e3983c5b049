"""The injection pilot (`injection.auto`): its candidates, its score, and that it reads no bias label."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from diffinject.data.colour import colorize, nearest_palette_colour
from diffinject.data.manifest import read_manifest
from diffinject.data.tensors import load_split
from diffinject.diffusion.injection_params import InjectionParams
from diffinject.diffusion.inversion_store import InvertedSet
from diffinject.diffusion.operators import OPERATORS
from diffinject.errors import DiffinjectError
from diffinject.pilot import rounds, scoring
from diffinject.pilot.candidates import DEFAULT_GRID, Candidate, candidate_grid, parse_candidate
from tests.conftest import null_bias_copy

# --- candidates -----------------------------------------------------------------------------------


def test_a_candidate_without_a_label_rule_is_tried_under_both():
    both = parse_candidate("operator=channel_stats,site=up0+up1,t_max=300,h_gamma=1.0")
    assert [c.label_from for c in both] == ["content", "style"]
    assert both[0].sites == ("up0", "up1") and both[0].t_max == 300
    (one,) = parse_candidate("operator=slerp,site=h,t_max=null,h_gamma=0.7,label_from=content")
    assert one.t_max is None and one.as_params()["site"] == ["h"] and "t_edit" not in one.as_params()
    assert len(candidate_grid(None)) == 2 * len(DEFAULT_GRID)
    # the built-in grid is not re-checked when params are loaded: it is checked here
    assert {c.operator for c in candidate_grid(None)} <= set(OPERATORS)
    assert all(0 <= c.h_gamma <= 1 for c in candidate_grid(None))


@pytest.mark.parametrize("grid, match", [
    (["operator=blend,site=h"], "operator 'blend'"),
    (["operator=slerp"], "expected operator=..,site="),
    (["operator=slerp,site=h,label_from=bias"], "label_from must be content or style"),
    (["site"], "not key=value"),
])
def test_a_bad_pilot_grid_names_the_key(grid, match):
    """The grid is read where the pilot runs (so the schema, which train_diffusion imports, does not
    import the pilot or the operators)."""
    with pytest.raises(DiffinjectError, match=rf"params 'injection.pilot_grid': .*{match}"):
        candidate_grid(grid)


def test_a_set_operator_is_one_the_sampler_implements():
    with pytest.raises(DiffinjectError, match=r"params 'injection.operator': got 'blend', expected one of slerp, "):
        InjectionParams(operator="blend").check_against_model(("h", "up0"), 1000, operators=tuple(OPERATORS))
    InjectionParams(operator="channel_mean").check_against_model(("h", "up0"), 1000, operators=tuple(OPERATORS))


def test_the_biased_model_cannot_be_the_reference():
    with pytest.raises(DiffinjectError, match="params .injection.pilot_reference.: got .biased."):
        InjectionParams(pilot_reference="biased").check()


# --- the score on planted pilots ---------------------------------------------------------------------
# Colored MNIST with stand-ins for the two models that make the planted cases exact: the bias proxy
# reads the stroke colour (what the biased classifier learns), the reference model knows the digit.


@pytest.fixture(scope="module")
def planted(prepared_mnist):
    """(originals = the train split's conflicts, their labels; aligned style images, their labels; their
    grey digits) from the prepared Colored MNIST."""
    manifest = read_manifest(prepared_mnist)
    train = load_split(prepared_mnist, "train", manifest)
    aligned = manifest.loc[manifest["split"] == "train", "aligned"].to_numpy()
    conflicts = np.flatnonzero(~aligned)[:30]
    styles = np.flatnonzero(aligned)[::97][:40]
    grey = train.images[styles].max(1).values.double()  # (n, H, W): the stroke's intensity, times its colour's peak
    grey = (grey * 255 / grey.flatten(1).max(1).values.view(-1, 1, 1)).round().to(torch.uint8).numpy()
    return (train.images[conflicts], train.targets[conflicts].numpy(), train.images[styles],
            train.targets[styles].numpy(), grey)


def score(images: torch.Tensor, labels: np.ndarray, originals: torch.Tensor) -> dict[str, float]:
    colour_model = nearest_palette_colour(images.permute(0, 2, 3, 1).numpy())  # the bias proxy's prediction
    reference = np.asarray(labels)  # a reference model that reads every digit right
    spread = float(np.median(scoring.nearest_distance(originals, originals, exclude_self=True)))
    return scoring.score_pilot(labels, colour_model, reference, scoring.nearest_distance(images, originals), spread)


def test_a_setting_that_copies_the_content_scores_low_on_diversity(planted):
    originals, labels, *_ = planted
    copied = score(originals.clone(), labels, originals)
    assert copied["conflict"] == 1.0 and copied["fidelity"] == 1.0  # each copy is a real conflict with its label...
    assert copied["diversity"] == 0.0 and copied["score"] == 0.0  # ... and no new sample


def test_a_setting_that_leaves_the_style_untouched_scores_low_on_conflict(planted):
    originals, _, styles, style_labels, _ = planted
    untouched = score(styles, style_labels, originals)
    assert untouched["conflict"] < 0.05 and untouched["score"] < 0.05
    assert untouched["diversity"] > 0.9  # new images, but aligned ones


def test_the_style_in_another_class_colour_wins(planted):
    """The pool debiasing needs: the style's digit in another class's colour, labelled as the style."""
    originals, labels, styles, style_labels, grey = planted
    recoloured = colorize(grey, (style_labels + 1) % 10, 0.005, np.random.default_rng(0))
    recoloured = torch.from_numpy(recoloured).permute(0, 3, 1, 2).contiguous()
    good = score(recoloured, style_labels, originals)
    assert good["conflict"] == 1.0 and good["diversity"] > 0.5 and good["score"] > 0.5
    assert good["score"] > score(originals.clone(), labels, originals)["score"]
    assert good["score"] > score(styles, style_labels, originals)["score"]


def test_conflict_trust_is_one_at_chance_and_zero_for_a_label_reader():
    assert scoring.conflict_trust(0.1, 10) == 1.0 and scoring.conflict_trust(0.05, 10) == 1.0  # at or below chance
    assert scoring.conflict_trust(1.0, 10) == 0.0
    assert scoring.conflict_trust(0.55, 10) == pytest.approx(0.5)


def test_without_trust_a_miss_of_the_biased_model_earns_nothing():
    """Full trust is the three-way product; zero trust drops the conflict term (fidelity · diversity),
    so an unreadable image no longer outscores a faithful one the biased model happens to read."""
    targets = np.array([0, 1, 2, 3])
    biased = np.array([9, 9, 2, 3])  # misses the first two
    reference = np.array([9, 9, 2, 3])  # ... which the reference cannot read either
    distance, spread = np.ones(4), 1.0
    full = scoring.score_pilot(targets, biased, reference, distance, spread, trust=1.0)
    none = scoring.score_pilot(targets, biased, reference, distance, spread, trust=0.0)
    half = scoring.score_pilot(targets, biased, reference, distance, spread, trust=0.5)
    assert full["score"] == 0.0 and none["score"] == 0.5 and half["score"] == 0.25
    assert full["conflict"] == none["conflict"] == 0.5  # the reported terms do not depend on trust


def test_run_pilot_picks_the_planted_winner(planted, monkeypatch):
    """run_pilot over three planted candidates (generation replaced by the planted images) picks the
    recoloured style, whatever the grid's order."""
    originals, labels, styles, style_labels, grey = planted
    recoloured = torch.from_numpy(colorize(grey, (style_labels + 1) % 10, 0.005, np.random.default_rng(0))).permute(0, 3, 1, 2)
    planted_pools = {"copy": rounds.PilotPool(originals.clone(), labels),
                     "untouched": rounds.PilotPool(styles, style_labels),
                     "recolour": rounds.PilotPool(recoloured.contiguous(), style_labels)}
    monkeypatch.setattr(rounds, "generate_pilot", lambda unet, sched, candidate, *a, **k: planted_pools[candidate.operator])
    candidates = [Candidate(name, ("up0",), 300, 1.0, "style") for name in ("copy", "recolour", "untouched")]
    contents = InvertedSet(x_T=torch.zeros(1), ids=torch.zeros(1), targets=torch.zeros(1))
    colour_model = lambda images: nearest_palette_colour(images.permute(0, 2, 3, 1).numpy())  # noqa: E731
    oracle = {id(pool.images): pool.targets for pool in planted_pools.values()}
    result = rounds.run_pilot(None, None, None, contents, contents, {}, candidates, 8, 0, 8, colour_model,
                             lambda images: oracle[id(images)], originals)
    assert candidates[result.winner].operator == "recolour"
    assert [row["name"].split()[0] for row in result.rows] == ["copy", "recolour", "untouched"]


# --- near-ties: bootstrap intervals and successive halving ----------------------------------------------


def planted_rates(monkeypatch, rates: dict[str, float]):
    """generate_pilot replaced: candidate `operator` makes images the reference reads right at its rate
    (drawn per image from the seed, so two candidates of one rate make identical pools) and the biased
    model always misses; returns the run_pilot arguments that read them."""
    made = {}

    def generate(unet, sched, candidate, base, contents, styles, features, size, seed, batch_size):
        rng = np.random.default_rng(seed)
        images = torch.from_numpy(rng.integers(0, 256, (size, 3, 8, 8), dtype=np.uint8))
        targets = rng.integers(0, 10, size)
        right = rng.random(size) < rates[candidate.operator]
        made[id(images)] = np.where(right, targets, (targets + 1) % 10)
        return rounds.PilotPool(images, targets)

    monkeypatch.setattr(rounds, "generate_pilot", generate)
    contents = InvertedSet(x_T=torch.zeros(1), ids=torch.zeros(1), targets=torch.zeros(1))
    originals = torch.from_numpy(np.random.default_rng(99).integers(0, 256, (16, 3, 8, 8), dtype=np.uint8))
    reference = lambda images: made[id(images)]  # noqa: E731
    biased = lambda images: np.full(len(images), -1)  # noqa: E731
    return contents, biased, reference, originals


def test_two_candidates_with_identical_images_tie_and_the_first_wins(monkeypatch):
    contents, biased, reference, originals = planted_rates(monkeypatch, {"a": 0.5, "b": 0.5})
    candidates = [Candidate(name, ("up0",), 300, 1.0, "style") for name in ("a", "b")]
    result = rounds.run_pilot(None, None, None, contents, contents, {}, candidates, 32, 0, 8, biased, reference, originals,
                             rungs=2)
    first, second = result.rows
    assert first["score"] == second["score"] and (first["score_low"], first["score_high"]) == (second["score_low"], second["score_high"])
    assert result.winner == 0
    assert result.rungs == [["a " + candidates[0].name[2:], "b " + candidates[1].name[2:]]] * 3  # tied: every rung spent
    assert first["n_images"] == second["n_images"] == 32 + 32 + 64


def test_a_clearly_better_candidate_wins_at_the_first_rung(monkeypatch):
    contents, biased, reference, originals = planted_rates(monkeypatch, {"good": 0.95, "bad": 0.05, "worse": 0.0})
    candidates = [Candidate(name, ("up0",), 300, 1.0, "style") for name in ("bad", "good", "worse")]
    result = rounds.run_pilot(None, None, None, contents, contents, {}, candidates, 64, 0, 8, biased, reference, originals,
                             rungs=2)
    assert result.winner == 1 and len(result.rungs) == 1
    assert [row["n_images"] for row in result.rows] == [64, 64, 64]
    assert result.rows[0]["score_high"] < result.rows[1]["score_low"]


def test_a_near_tie_spends_more_images_on_the_tied_candidates_only(monkeypatch):
    contents, biased, reference, originals = planted_rates(monkeypatch, {"x": 0.55, "y": 0.5, "z": 0.0})
    candidates = [Candidate(name, ("up0",), 300, 1.0, "style") for name in ("x", "y", "z")]
    result = rounds.run_pilot(None, None, None, contents, contents, {}, candidates, 16, 0, 8, biased, reference, originals,
                             rungs=1)
    assert [len(names) for names in result.rungs] == [3, 2]  # z is out after the first rung
    assert [row["n_images"] for row in result.rows] == [32, 32, 16]


def test_paired_images_tell_a_small_but_consistent_gap_apart():
    """Candidate b scores 0.02 below a on every one of the same pairs: their own intervals overlap
    widely, the paired gap does not reach 0, so b is out; an independent c of the same mean stays in."""
    a = np.random.default_rng(0).random(128)
    b, c = a - 0.02, np.random.default_rng(1).permutation(a) - 0.02
    low_a, _ = scoring.bootstrap_interval(a, seed=0)
    _, high_b = scoring.bootstrap_interval(b, seed=0)
    assert high_b > low_a  # marginal intervals cannot tell them apart
    assert scoring.still_in_the_race([a, b], seed=0) == [0]
    assert scoring.still_in_the_race([a, c], seed=0) == [0, 1]


def test_the_bootstrap_interval_holds_the_mean_and_is_seeded():
    values = np.random.default_rng(0).random(200)
    low, high = scoring.bootstrap_interval(values, seed=1)
    assert low < values.mean() < high and high - low < 0.2
    assert scoring.bootstrap_interval(values, seed=1) == (low, high)
    assert scoring.bootstrap_interval(np.full(50, 0.3), seed=1) == pytest.approx((0.3, 0.3))


# --- the stage: the pilot reads no bias label ----------------------------------------------------------

GRID = ["operator=channel_stats,site=up0+up1,t_max=300,label_from=style",
        "operator=slerp,site=h,h_gamma=0.7,label_from=content"]


def pilot_params() -> dict:
    return {"seed": 0, "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
            "biased": {"epochs": 1}, "lff": {"epochs": 1},
            "injection": {"n_gen_step": 6, "n_inv_step": 6, "n_samples": 8, "n_samples_ratio": None, "batch_size": 8,
                          "pilot_size": 16, "pilot_grid": GRID}}


def without_bias_labels(labelled: Path, dest: Path) -> Path:
    """A copy of a repository whose data/prepared manifest has null bias and aligned columns (images,
    models and inversions linked)."""
    dest.mkdir(parents=True)
    for item in labelled.iterdir():
        if item.name != "data":
            os.symlink(item.resolve(), dest / item.name)
    (dest / "data").mkdir()
    os.symlink((labelled / "data" / "inversions").resolve(), dest / "data" / "inversions")
    null_bias_copy((labelled / "data" / "prepared").resolve(), dest / "data" / "prepared")
    return dest


@pytest.mark.slow  # two 1-epoch classifiers and two pilots of 2 x 16 images on the tiny DDPM (~20 s)
def test_the_pilot_reads_no_bias_label(tiny_ddpm, prepared_mnist, tmp_path):
    from diffinject.stages import inject, lff, train_biased
    from tests.conftest import inverted_repo

    labelled = inverted_repo(tmp_path / "labelled", prepared_mnist, *tiny_ddpm, 6)
    train_biased.run(pilot_params(), labelled)
    lff.run(pilot_params(), labelled)
    unlabelled = without_bias_labels(labelled, tmp_path / "unlabelled")
    reports = []
    for root in (labelled, unlabelled):
        report = inject.run(pilot_params(), root)
        reports.append(report["pilot"])
        assert json.loads((root / "metrics" / "inject.json").read_text())["label_rule"]["decided_by"] == "pilot"
        assert (root / "metrics" / "plots" / "inject" / "pilot.png").is_file()
    assert reports[0] == reports[1]
    assert [row["name"] for row in reports[0]["candidates"]] == [c.name for c in candidate_grid(GRID)]


def test_auto_without_the_reference_model_is_a_one_line_error(tiny_ddpm, prepared_mnist, tmp_path):
    from diffinject.stages import inject
    from tests.conftest import inverted_repo

    root = inverted_repo(tmp_path / "repo", prepared_mnist, *tiny_ddpm, 6)
    with pytest.raises(DiffinjectError, match=r"models/biased/model.pt: model not found \(injection.auto needs models/biased"):
        inject.run(pilot_params(), root)
    assert not (root / "data" / "synthetic").exists()


# --- what the user sets is obeyed ------------------------------------------------------------------


def test_restrict_substitutes_the_set_keys_and_drops_duplicates():
    from diffinject.pilot.candidates import restrict

    grid = candidate_grid(["operator=channel_stats,site=up0+up1,t_max=300,h_gamma=1.0",
                           "operator=slerp,site=h,h_gamma=0.7"])  # 2 settings x 2 label rules
    assert restrict(grid, {}) == grid
    gamma = restrict(grid, {"h_gamma": 0.5})
    assert len(gamma) == 4 and {c.h_gamma for c in gamma} == {0.5}
    assert [(c.operator, c.sites, c.t_max, c.label_from) for c in gamma] == [(c.operator, c.sites, c.t_max, c.label_from) for c in grid]
    assert [c.label_from for c in restrict(grid, {"label_from": "style"})] == ["style", "style"]
    every = restrict(grid, {"label_from": "style", "site": ["up0"], "operator": "channel_mean", "t_max": None, "h_gamma": 1.0})
    assert every == [Candidate("channel_mean", ("up0",), None, 1.0, "style")]


def test_fixed_lists_only_the_keys_the_params_set():
    assert InjectionParams().fixed() == {}
    cfg = InjectionParams(h_gamma=0.2, site="up1", t_max=None)
    assert cfg.fixed() == {"h_gamma": 0.2, "site": ["up1"], "t_max": None}
    assert cfg.with_hand_chosen().fixed() == {"operator": "channel_stats", "site": ["up1"], "t_max": None, "h_gamma": 0.2,
                                              "guidance_scale": 1.0, "window_guidance_scale": None}


def test_every_key_set_under_auto_runs_no_pilot_and_reaches_the_pool(tiny_ddpm, prepared_mnist, tmp_path):
    """No biased or reference model exists here: with nothing left to choose, no pilot runs."""
    from diffinject.stages import inject
    from tests.conftest import inverted_repo

    root = inverted_repo(tmp_path / "repo", prepared_mnist, *tiny_ddpm, 6)
    set_keys = {"operator": "channel_mean", "site": ["up1"], "t_max": 500, "h_gamma": 0.2, "label_from": "content"}
    params = pilot_params()
    params["injection"].update(set_keys)
    report = inject.run(params, root)
    assert "pilot" not in report
    assert report["chosen_by"] == {**{key: "params" for key in set_keys}, "guidance_scale": "unconditional DDPM",
                                   "window_guidance_scale": "unconditional DDPM"}
    pool = pd.read_parquet(root / "data" / "synthetic" / "manifest.parquet")
    assert set(pool["h_gamma"]) == {0.2} and set(pool["operator"]) == {"channel_mean"} and set(pool["sites"]) == {"up1"}
    assert set(pool["t_max"]) == {500} and set(pool["label_from"]) == {"content"}


@pytest.mark.slow  # two 1-epoch classifiers and a pilot of 2 x 16 images on the tiny DDPM (~15 s)
def test_a_set_h_gamma_restricts_the_pilot_and_reaches_the_pool(tiny_ddpm, prepared_mnist, tmp_path):
    from diffinject.stages import inject, lff, train_biased
    from tests.conftest import inverted_repo

    root = inverted_repo(tmp_path / "repo", prepared_mnist, *tiny_ddpm, 6)
    params = pilot_params()
    train_biased.run(params, root)
    lff.run(params, root)
    params["injection"]["h_gamma"] = 0.2
    report = inject.run(params, root)
    assert {row["h_gamma"] for row in report["pilot"]["candidates"]} == {0.2}
    assert report["pilot"]["fixed_by_params"] == ["h_gamma"]
    assert report["chosen_by"]["h_gamma"] == "params" and report["chosen_by"]["operator"] == "pilot"
    assert set(pd.read_parquet(root / "data" / "synthetic" / "manifest.parquet")["h_gamma"]) == {0.2}


@pytest.mark.parametrize("key, value, match", [
    ("site", "up9", r"params 'injection.site': 'up9' is not a site of this UNet"),
    ("t_max", 5000, r"params 'injection.t_max': got 5000, expected <= 999"),
    ("t_edit", 1000, r"params 'injection.t_edit': got 1000, expected <= 999"),
    ("operator", "add", r"params 'injection.operator': got 'add'"),
    ("h_gamma", 2.0, r"params 'injection.h_gamma': got 2.0"),
])
def test_an_invalid_set_key_under_auto_is_a_one_line_error(key, value, match, tiny_ddpm, prepared_mnist, tmp_path):
    from diffinject.stages import inject
    from tests.conftest import inverted_repo

    root = inverted_repo(tmp_path / "repo", prepared_mnist, *tiny_ddpm, 6)
    params = pilot_params()
    params["injection"][key] = value
    with pytest.raises(DiffinjectError, match=match) as caught:
        inject.run(params, root)
    assert "\n" not in str(caught.value)
    assert not (root / "data" / "synthetic").exists()
