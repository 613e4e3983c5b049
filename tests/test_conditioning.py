"""The class label in the generator: a class-conditional DDPM trained with label dropout, classifier-free
guidance at inversion and injection (diffusion/conditioning.py), and `injection.guidance_scale` obeyed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from diffinject.diffusion.conditioning import Guidance, default_to_null_class, drop_labels, guided_output, null_class
from diffinject.diffusion.injection_params import InjectionParams
from diffinject.pilot.candidates import GUIDANCE_GRID
from diffinject.diffusion.model import DiffusionConfig, build_scheduler, build_unet, load_diffusion, save_diffusion
from diffinject.errors import DiffinjectError

N_CLASSES = 10


def conditional_unet(seed: int = 0):
    """An untrained class-conditional 2-level UNet (8/16 channels) on 28 px RGB, 10 classes + null."""
    torch.manual_seed(seed)
    cfg = DiffusionConfig(block_out_channels=[8, 16], norm_num_groups=4, class_conditional=True)
    return build_unet(cfg, 28, 3, N_CLASSES).eval(), build_scheduler(cfg)


@pytest.fixture(scope="module")
def trained_conditional(prepared_mnist):
    """The conditional UNet after 30 steps of label-dropout training on the prepared digits (~3 s)."""
    import lightning

    from diffinject.data.loaders import make_loader
    from diffinject.data.tensors import load_split
    from diffinject.diffusion.training import DiffusionModule

    lightning.seed_everything(0, verbose=False)
    unet, scheduler = conditional_unet()
    unet.train()
    before = unet.class_embedding.weight.detach().clone()
    module = DiffusionModule(unet, scheduler, 2e-3, 5, 30, 0.9, label_dropout=0.5)
    trainer = lightning.Trainer(max_steps=30, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                                enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, make_loader(load_split(prepared_mnist, "train"), 32, shuffle=True, seed=0))
    return module.unet.eval(), scheduler, before


def test_the_unet_has_a_class_embedding_per_class_and_a_null_class():
    unet, _ = conditional_unet()
    assert unet.config.num_class_embeds == N_CLASSES + 1 and null_class(unet) == N_CLASSES
    with pytest.raises(DiffinjectError, match="diffusion.label_dropout"):
        build_unet(DiffusionConfig(block_out_channels=[8, 16], norm_num_groups=4, class_conditional=True,
                                   label_dropout=1.0), 28, 3, N_CLASSES)


def test_label_dropout_replaces_about_p_of_the_labels_with_the_null_class():
    torch.manual_seed(0)
    labels = torch.randint(0, N_CLASSES, (20_000,))
    dropped = drop_labels(labels, 0.1, N_CLASSES)
    replaced = dropped != labels
    assert 0.09 < replaced.float().mean() < 0.11
    assert (dropped[replaced] == N_CLASSES).all() and torch.equal(dropped[~replaced], labels[~replaced])
    assert torch.equal(drop_labels(labels, 0.0, N_CLASSES), labels)


def test_training_with_label_dropout_learns_every_class_row_and_the_null_row(trained_conditional):
    unet, _, before = trained_conditional
    moved = (unet.class_embedding.weight.detach() - before).abs().sum(1)
    assert (moved > 0).all(), "every class embedding, the null class's included, was trained"


def test_it_generates_under_the_null_class_and_under_a_label(trained_conditional):
    from diffinject.diffusion.ddim import ddim_generate

    unet, scheduler, _ = trained_conditional
    x_T = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 5, 9])
    null = ddim_generate(unet, scheduler, x_T, 6, Guidance(labels, 0.0))
    plain = ddim_generate(unet, scheduler, x_T, 6)
    conditional = ddim_generate(unet, scheduler, x_T, 6, Guidance(labels, 1.0))
    guided = ddim_generate(unet, scheduler, x_T, 6, Guidance(labels, 3.0))
    assert null.shape == conditional.shape == guided.shape == x_T.shape
    assert torch.equal(null, plain), "a call without labels is the null class's"
    assert not torch.equal(null, conditional) and not torch.equal(conditional, guided)
    assert torch.equal(guided, ddim_generate(unet, scheduler, x_T, 6, Guidance(labels, 3.0))), "deterministic"


def test_guidance_combines_the_conditional_and_null_predictions():
    unet, _ = conditional_unet()
    x, t = torch.randn(3, 3, 28, 28), torch.full((3,), 500)
    labels = torch.tensor([1, 2, 3])
    with torch.no_grad():
        unconditional = unet(x, t, class_labels=torch.full((3,), N_CLASSES)).sample
        conditional = unet(x, t, class_labels=labels).sample
        assert torch.equal(guided_output(unet, x, t, Guidance(labels, 0.0)), unconditional)
        assert torch.equal(guided_output(unet, x, t, Guidance(labels, 1.0)), conditional)
        expected = unconditional + 2.5 * (conditional - unconditional)
        torch.testing.assert_close(guided_output(unet, x, t, Guidance(labels, 2.5)), expected, rtol=1e-5, atol=1e-5)


def test_an_unconditional_unet_ignores_guidance():
    from tests.conftest import tiny_unet

    unet, _ = tiny_unet()
    assert default_to_null_class(unet) is unet and not hasattr(unet, "_null_class_hook")
    x, t = torch.randn(2, 3, 28, 28), torch.full((2,), 10)
    with torch.no_grad():
        assert torch.equal(guided_output(unet, x, t, Guidance(torch.tensor([0, 1]), 3.0)), unet(x, t).sample)


def _injected(unet, scheduler, scale, labels, window=None):
    from diffinject.diffusion.ddim import ddim_invert
    from diffinject.diffusion.sampler import InjectionSampler, capture_features

    x0 = torch.rand(4, 3, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    own = torch.tensor([1, 2, 3, 4])
    inv = ddim_invert(unet, scheduler, x0, 6, keep_path=True, guidance=Guidance(own))
    content = capture_features(unet, inv.xs, inv.timesteps, ["up0", "h"], labels=own)
    cfg = InjectionParams(operator="channel_stats", site=["up0", "h"], h_gamma=0.8, label_from="content",
                          guidance_scale=scale, window_guidance_scale=window, t_max=500, n_gen_step=6)
    with InjectionSampler(unet, scheduler, cfg) as sampler:
        return sampler.generate(inv.x_T.flip(0), content, inv.timesteps, labels=labels)


def test_guidance_scale_zero_equals_the_unconditional_path_bit_for_bit():
    unet, scheduler = conditional_unet()
    labels = torch.tensor([4, 3, 2, 1])
    assert torch.equal(_injected(unet, scheduler, 0.0, labels), _injected(unet, scheduler, 0.0, None))
    guided = _injected(unet, scheduler, 3.0, labels)  # one batch of 2B: the content is doubled with it
    assert guided.shape == (4, 3, 28, 28) and torch.isfinite(guided).all()
    assert not torch.equal(guided, _injected(unet, scheduler, 1.0, labels))


def test_the_window_scale_applies_on_the_injected_steps_only():
    unet, scheduler = conditional_unet()
    labels = torch.tensor([4, 3, 2, 1])
    everywhere = _injected(unet, scheduler, 1.0, labels)
    assert torch.equal(_injected(unet, scheduler, 1.0, labels, window=1.0), everywhere)
    no_label_in_window = _injected(unet, scheduler, 1.0, labels, window=0.0)
    assert not torch.equal(no_label_in_window, everywhere)
    assert not torch.equal(no_label_in_window, _injected(unet, scheduler, 0.0, labels)), "outside the window the label stays"


def test_a_saved_conditional_ddpm_loads_conditional_and_defaults_to_the_null_class(tmp_path):
    unet, scheduler = conditional_unet()
    save_diffusion(unet, scheduler, tmp_path / "ddpm")
    loaded, _ = load_diffusion(tmp_path / "ddpm", image_shape=(3, 28, 28))
    assert loaded.config.num_class_embeds == N_CLASSES + 1
    x, t = torch.randn(2, 3, 28, 28), torch.full((2,), 7)
    with torch.no_grad():
        assert torch.equal(loaded(x, t).sample, loaded(x, t, class_labels=torch.full((2,), N_CLASSES)).sample)


# --- injection.guidance_scale: checked, chosen by the pilot only when left auto, obeyed when set -----------


def test_a_negative_guidance_scale_is_a_one_line_error():
    with pytest.raises(DiffinjectError, match=r"params 'injection.guidance_scale': got -1"):
        InjectionParams(guidance_scale=-1.0).check()
    with pytest.raises(DiffinjectError, match=r"params 'injection.window_guidance_scale': got -0.5"):
        InjectionParams(window_guidance_scale=-0.5).check()


def test_a_guidance_scale_on_an_unconditional_ddpm_is_a_one_line_error():
    with pytest.raises(DiffinjectError, match=r"params 'injection.guidance_scale': got 2.0, but the DDPM is not class-conditional"):
        InjectionParams(guidance_scale=2.0).check_against_model(("h", "up0"), 1000, class_conditional=False)
    InjectionParams(guidance_scale=2.0).check_against_model(("h", "up0"), 1000, class_conditional=True)
    InjectionParams(guidance_scale=None).check_against_model(("h", "up0"), 1000, class_conditional=False)
    with pytest.raises(DiffinjectError, match=r"params 'injection.window_guidance_scale': got 0.0, but the DDPM is not"):
        InjectionParams(window_guidance_scale=0.0).check_against_model(("h", "up0"), 1000, class_conditional=False)


def test_the_pilot_grid_of_a_conditional_ddpm_runs_at_scale_one_unless_set():
    from diffinject.pilot.driver import pilot_candidates

    grid = ["operator=channel_stats,site=up0,t_max=300", "operator=slerp,site=h,h_gamma=0.7"]
    sites = ["h", "up0", "up1"]
    unguided, _ = pilot_candidates(InjectionParams(pilot_grid=grid, guidance_scale=None), sites, conditional=False)
    assert {c.guidance_scale for c in unguided} == {None}
    auto, _ = pilot_candidates(InjectionParams(pilot_grid=grid), sites, conditional=True)
    assert {c.guidance_scale for c in auto} == {1.0} and all(c.name.endswith("cfg1") for c in auto)
    fixed, _ = pilot_candidates(InjectionParams(pilot_grid=grid, guidance_scale=2.0), sites, conditional=True)
    assert {c.guidance_scale for c in fixed} == {2.0}
    assert {(0.0, None), (1.0, None)} <= set(GUIDANCE_GRID), "the unconditional and plain conditional paths stay candidates"


def test_the_guidance_round_keeps_the_set_guidance_keys():
    from diffinject.pilot.candidates import Candidate
    from diffinject.pilot.driver import guidance_candidates

    winner = Candidate("channel_stats", ("up0",), 300, 1.0, "style", 1.0)
    assert [(c.guidance_scale, c.window_guidance_scale) for c in guidance_candidates(winner, {})] == list(GUIDANCE_GRID)
    set_scale = guidance_candidates(winner, {"guidance_scale": 3.0})
    assert [(c.guidance_scale, c.window_guidance_scale) for c in set_scale] == [(3.0, None), (3.0, 0.0)]
    assert len(guidance_candidates(winner, {"guidance_scale": 2.0, "window_guidance_scale": 0.0})) == 1


SET_KEYS = {"operator": "channel_mean", "site": ["up1"], "t_max": 500, "h_gamma": 0.5, "label_from": "content"}
NO_WINDOW_SCALE = {"window_guidance_scale": None}


def _inject(root, **injection):
    from diffinject.stages import inject

    params = {"seed": 0, "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
              "injection": {"n_gen_step": 6, "n_inv_step": 6, "n_samples": 8, "n_samples_ratio": None, "batch_size": 8,
                            **SET_KEYS, **injection}}
    return inject.run(params, root)


def test_a_set_guidance_scale_reaches_the_pool_and_is_not_replaced(prepared_mnist, tmp_path):
    """Every key set on a conditional DDPM: no pilot, no guidance round (no biased model exists here)."""
    from tests.conftest import inverted_repo

    root = inverted_repo(tmp_path / "repo", prepared_mnist, *conditional_unet(), 6)
    report = _inject(root, guidance_scale=2.0, **NO_WINDOW_SCALE)
    assert "pilot" not in report and report["chosen_by"]["guidance_scale"] == "params"
    pool = pd.read_parquet(root / "data" / "synthetic" / "manifest.parquet")
    assert set(pool["guidance_scale"]) == {2.0} and set(pool["h_gamma"]) == {0.5}
    # the pool's images are generated under their labels: a scale of 0 (the null class) makes others
    first = np.stack(pool["path"].map(lambda p: np.asarray(__import__("PIL.Image").Image.open(root / "data" / "synthetic" / p))))
    _inject(root, guidance_scale=0.0, **NO_WINDOW_SCALE)
    pool0 = pd.read_parquet(root / "data" / "synthetic" / "manifest.parquet")
    second = np.stack(pool0["path"].map(lambda p: np.asarray(__import__("PIL.Image").Image.open(root / "data" / "synthetic" / p))))
    assert set(pool0["guidance_scale"]) == {0.0} and not np.array_equal(first, second)


def test_an_unconditional_ddpm_reports_no_guidance_and_refuses_a_set_scale(prepared_mnist, tmp_path):
    from tests.conftest import inverted_repo, tiny_unet

    root = inverted_repo(tmp_path / "repo", prepared_mnist, *tiny_unet(), 6)
    report = _inject(root)
    assert report["chosen_by"]["guidance_scale"] == report["chosen_by"]["window_guidance_scale"] == "unconditional DDPM"
    columns = pd.read_parquet(root / "data" / "synthetic" / "manifest.parquet").columns
    assert "guidance_scale" not in columns and "window_guidance_scale" not in columns
    with pytest.raises(DiffinjectError, match=r"params 'injection.guidance_scale': got 3.0, but the DDPM is not") as caught:
        _inject(root, guidance_scale=3.0)
    assert "\n" not in str(caught.value)


@pytest.mark.slow  # two 1-epoch classifiers and a pilot of 3 scales x 16 images on a tiny DDPM (~15 s)
def test_a_guidance_scale_left_auto_is_the_guidance_rounds_choice(prepared_mnist, tmp_path):
    """Every other key set: the pilot's only round is the guidance round, over GUIDANCE_GRID."""
    from diffinject.stages import lff, train_biased
    from tests.conftest import inverted_repo

    root = inverted_repo(tmp_path / "repo", prepared_mnist, *conditional_unet(), 6)
    models = {"seed": 0, "trainer": {"accelerator": "cpu", "enable_progress_bar": False}, "biased": {"epochs": 1},
              "lff": {"epochs": 1}}
    train_biased.run(models, root)
    lff.run(models, root)
    report = _inject(root, pilot_size=16, pilot_rungs=0)
    rows = report["pilot"]["guidance"]["candidates"]
    assert [(row["guidance_scale"], row["window_guidance_scale"]) for row in rows] == list(GUIDANCE_GRID)
    assert {(row["operator"], row["h_gamma"]) for row in rows} == {("channel_mean", 0.5)}, "the set keys stay"
    assert report["chosen_by"]["guidance_scale"] == "pilot" and report["chosen_by"]["h_gamma"] == "params"
    chosen = next(row for row in rows if row["name"] == report["pilot"]["guidance"]["winner"])
    pool = pd.read_parquet(root / "data" / "synthetic" / "manifest.parquet")
    assert set(pool["guidance_scale"]) == {chosen["guidance_scale"]}
    assert report["window_guidance_scale"] == chosen["window_guidance_scale"]


def test_the_fair_generator_refuses_a_conditional_ddpm_in_one_line(prepared_mnist, tmp_path):
    from tests.conftest import inverted_repo

    root = inverted_repo(tmp_path / "repo", prepared_mnist, *conditional_unet(), 6)
    with pytest.raises(DiffinjectError, match=r"params 'injection.generator': fair does not support a class-conditional") as caught:
        _inject(root, generator="fair")
    assert "\n" not in str(caught.value) and not (root / "data" / "synthetic").exists()


def test_each_label_rule_gets_its_own_guidance_round():
    """The first round's best finalist per rule: an eliminated candidate's lucky score does not lead."""
    from diffinject.pilot.candidates import Candidate
    from diffinject.pilot.driver import rule_leaders

    candidates = [Candidate("channel_stats", ("up0",), t, 1.0, rule, 1.0) for t in (300, 500) for rule in ("content", "style")]
    rows = [{"score": 0.30, "rungs": 3}, {"score": 0.20, "rungs": 3},  # t 300: content, style
            {"score": 0.50, "rungs": 1}, {"score": 0.25, "rungs": 3}]  # t 500: content out at rung 1
    leaders = rule_leaders(candidates, rows)
    assert [(c.label_from, c.t_max) for c in leaders] == [("content", 300), ("style", 500)]
    assert rule_leaders(candidates[1::2], rows[1::2]) == [candidates[3]], "label_from set: one rule, one leader"
