"""The field's label-free baselines, DisEnt and Logit Correction, and DiffInject's pool inside them
(debiased_disent, debiased_lc): their maths on planted inputs, their checkpoints, and that no stage
of theirs reads a bias label."""

from __future__ import annotations

import copy
import os
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from diffinject.data.manifest import read_manifest, write_manifest
from diffinject.models import disent_net
from diffinject.models.checkpoint import load_classifier
from diffinject.models.disent import swap_bias_features
from diffinject.models.disent_net import DisEntNet, build_disent
from diffinject.models.lc import GroupPrior, group_partners, lc_loss, mixup_strength
from diffinject.models.lff import RelativeDifficulty
from diffinject.models.networks import NetConfig
from diffinject.stages import debiased_disent, debiased_lc, disent, evaluate, lc
from tests.test_efficacy_rows import write_pool

TINY = {
    "seed": 0,
    "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
    "disent": {"epochs": 2, "swap_after": 5},
    "lc": {"epochs": 2},
    "debiased": {"bias_conflict_ratio": 0.05},
    "debiased_disent": {"epochs": 1, "swap_after": 5},
    "debiased_lc": {"epochs": 1},
}
ONE_DEVICE = types.SimpleNamespace(trainer=types.SimpleNamespace(world_size=1))


def params(**sections: dict) -> dict:
    out = copy.deepcopy(TINY)
    for name, values in sections.items():
        out[name] = dict(out.get(name) or {}, **values)
    return out


# --- DisEnt -------------------------------------------------------------------------------------------

def test_disent_swap_permutes_only_the_bias_features_and_keeps_each_label_with_its_features():
    z_i = torch.arange(8.0).view(4, 2)  # row r's intrinsic features: [2r, 2r + 1]
    z_b = 100 + torch.arange(8.0).view(4, 2)
    targets = torch.tensor([0, 1, 2, 3])
    perm = torch.tensor([2, 0, 3, 1])
    z_i_s, z_b_s, targets_s = swap_bias_features(z_i, z_b, targets, perm)
    assert torch.equal(z_i_s, z_i)  # intrinsic features and their label y stay in place
    assert torch.equal(z_b_s, z_b[perm]) and not torch.equal(z_b_s, z_b)
    for row in range(4):  # the bias side's label is the label of the image its bias features came from
        source = int(perm[row])
        assert torch.equal(z_b_s[row], z_b[source]) and targets_s[row] == targets[source]


def test_relative_difficulty_is_one_half_for_equal_losses_and_tends_to_one_when_the_bias_side_fails():
    targets = torch.tensor([0, 0, 1, 1])
    weigh = RelativeDifficulty(targets, num_classes=2, ema_alpha=0.7)
    index = torch.arange(4)
    same = torch.tensor([0.3, 2.0, 1.0, 0.5])
    torch.testing.assert_close(weigh(ONE_DEVICE, same, same.clone(), index, targets), torch.full((4,), 0.5), atol=1e-6, rtol=0)
    weigh = RelativeDifficulty(targets, num_classes=2, ema_alpha=0.7)
    # row 0: the bias side fails on it (its class's largest bias loss), the intrinsic side does not
    ce_b = torch.tensor([10.0, 1.0, 1.0, 1.0])
    ce_i = torch.tensor([1e-4, 1.0, 1.0, 1.0])
    weights = weigh(ONE_DEVICE, ce_b, ce_i, index, targets)
    assert weights[0] > 0.999 and weights[1] < 0.1
    torch.testing.assert_close(weights[2:], torch.full((2,), 0.5), atol=1e-6, rtol=0)


def test_disent_network_predicts_with_the_intrinsic_head_over_both_features():
    torch.manual_seed(0)
    net = build_disent(NetConfig("mlp", 3, (1, 4, 4)))
    x = torch.rand(5, 1, 4, 4)
    z_i, z_b = net.features(x)
    assert z_i.shape == z_b.shape == (5, 100)
    torch.testing.assert_close(net(x), net.fc_i(torch.cat([z_i, z_b], dim=1)))


# --- LC ---------------------------------------------------------------------------------------------

def test_lc_correction_is_zero_when_the_biased_branch_is_uniform():
    k = 10
    prior = GroupPrior(k, alpha=0.995)
    targets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    uniform = torch.full((8, k), 1 / k)
    pseudo = torch.tensor([0, 1, 2, 3, 3, 2, 1, 9])  # some groups seen, most never
    for _ in range(3):
        prior.update(uniform.gather(1, targets[:, None]).squeeze(1), targets, pseudo)
    correction = prior.correction(pseudo)
    torch.testing.assert_close(correction, torch.zeros(8, k), atol=1e-6, rtol=0)
    logits = torch.randn(8, k)
    torch.testing.assert_close(lc_loss(logits, targets, correction), F.cross_entropy(logits, targets, reduction="none"))


def test_lc_correction_favours_the_class_the_bias_makes_likely():
    """A biased branch that is sure of the shortcut: (y, a = y) groups get a high prior, so a sample with
    pseudo bias a has the logit of class a raised, and the main network must win the others by more."""
    k = 3
    prior = GroupPrior(k, alpha=0.0)
    targets = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])
    pseudo = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 1])  # the last sample conflicts: label 0, bias 1
    probs = torch.where(targets == pseudo, 0.9, 0.1)  # the biased branch's p(y | x)
    prior.update(probs, targets, pseudo)
    correction = prior.correction(pseudo)
    assert (correction.argmax(1) == pseudo).all()
    loss = lc_loss(torch.zeros(10, k), targets, correction)
    assert loss[9] > loss[0]  # the conflicting sample costs more: it is learnt harder


def test_lc_epoch_prior_is_each_groups_last_epoch_mean_whatever_its_size():
    """`prior_update: epoch`: a rare group forgets its early value after one epoch, where the per-sample
    EMA (α 0.995) still holds most of it after many."""
    k = 2
    ema, epoch = GroupPrior(k, alpha=0.995), GroupPrior(k, alpha=0.995, update="epoch")
    targets, pseudo = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 0])  # group (1, 0) meets one sample a batch
    for prior in (ema, epoch):
        prior.update(torch.full((4,), 0.5), targets, pseudo)  # early: near uniform
        prior.end_epoch()
        for _ in range(10):  # then the biased branch is sure: p(y | x) 0.05 on the rare group
            prior.update(torch.tensor([0.9, 0.9, 0.9, 0.05]), targets, pseudo)
    assert ema.value[0, 0] == pytest.approx(0.9 - 0.4 * 0.995 ** 30, abs=1e-5)
    assert epoch.value[0, 0] == pytest.approx(0.5) and epoch.value[1, 0] == pytest.approx(0.5)  # a closed group waits ...
    epoch.end_epoch()
    assert epoch.value[0, 0] == pytest.approx(0.9) and epoch.value[1, 0] == pytest.approx(0.05)  # ... for its epoch's mean
    assert epoch.value[0, 1] == pytest.approx(0.5)  # a group never met keeps 1/K
    assert ema.value[1, 0] == pytest.approx(0.05 + 0.45 * 0.995 ** 10, abs=1e-5)  # still 95 % of the way at 0.5


def test_disent_lr_decays_only_in_the_swap_phase():
    from diffinject.models.disent import swap_lr

    assert [swap_lr(1.0, step, 400, 320, 0.5) for step in (0, 400, 719, 720, 1040, 1600)] == [1, 1, 1, 0.5, 0.25, 0.125]
    assert swap_lr(1.0, 5000, 400, 0, 0.5) == 1.0  # no decay step: constant


def test_group_mixup_partners_share_the_class_and_come_from_its_minority_when_it_has_one():
    torch.manual_seed(0)
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    pseudo = torch.tensor([0, 0, 2, 0, 1, 1, 1])  # class 0's minority is row 2; class 1 has none
    partners = group_partners(targets, pseudo, num_classes=3)
    assert torch.equal(targets[partners], targets)
    assert (partners[:4] == 2).all()
    assert sorted(partners[4:].tolist()) == [4, 5, 6]  # a permutation within the class
    assert mixup_strength(0, 0) == 0.5 and mixup_strength(0, 100) < mixup_strength(50, 100) < mixup_strength(100, 100) == 0.5


# --- stages -----------------------------------------------------------------------------------------

def unlabelled_root(tmp_path: Path, prepared: Path, how: str) -> Path:
    """A root whose manifest's bias and aligned columns are null (`none`) or shuffled (`shuffled`)."""
    root = tmp_path / how
    out = root / "data" / "prepared"
    out.mkdir(parents=True)
    manifest = read_manifest(prepared)
    if how == "none":
        manifest["bias"] = pd.array([None] * len(manifest), dtype="Int64")
        manifest["aligned"] = pd.array([None] * len(manifest), dtype="boolean")
    else:
        rng = np.random.default_rng(0)
        manifest["bias"] = rng.permutation(manifest["bias"].to_numpy())
        manifest["aligned"] = rng.permutation(manifest["aligned"].to_numpy())
    write_manifest(manifest, out)
    for split in ("train", "valid", "test"):
        os.symlink(prepared / split, out / split)
    return root


STAGES = {"disent": disent, "lc": lc, "debiased_disent": debiased_disent, "debiased_lc": debiased_lc}


def run_stage(name: str, root: Path) -> dict[str, torch.Tensor]:
    extra = {"pool": write_pool(root, 6)} if name.startswith("debiased_") else {}
    STAGES[name].run(params(**{name: extra}), root)
    return torch.load(root / "models" / name / "model.pt", weights_only=True)


@pytest.mark.slow  # trains each of the four stages three times (~40 s on 2 CPU cores)
@pytest.mark.parametrize("name", list(STAGES))
def test_stage_reads_no_bias_label(tmp_path, prepared_mnist, name):
    """The same weights whether the manifest's bias labels are true, shuffled or absent."""
    weights = [run_stage(name, root) for root in (unlabelled_root(tmp_path, prepared_mnist, "shuffled"),
                                                 unlabelled_root(tmp_path, prepared_mnist, "none"))]
    labelled = tmp_path / "labelled"
    (labelled / "data").mkdir(parents=True)
    (labelled / "data" / "prepared").symlink_to(prepared_mnist)
    weights.append(run_stage(name, labelled))
    for other in weights[1:]:
        assert other.keys() == weights[0].keys()
        assert all(torch.equal(other[k], weights[0][k]) for k in other)


@pytest.mark.slow  # two short trainings and an evaluation (~10 s)
def test_disent_and_lc_checkpoints_reload_and_are_evaluated(root):
    out = disent.run(params(), root)
    assert out["epochs"] == 2 and 0 <= out["valid"]["acc"] <= 1
    lc.run(params(), root)
    net, cfg, meta = load_classifier(root / "models" / "disent", num_classes=10, image_shape=(3, 28, 28),
                                     architectures=(disent_net,))
    assert isinstance(net, DisEntNet) and meta["composite"] == "disent" and meta["params"]["swap_after"] == 5
    results = evaluate.run(params(evaluate={"models": ["disent", "lc"]}), root)
    assert results["disent"]["valid"]["acc"] == pytest.approx(out["valid"]["acc"])  # the selected epoch's weights
    assert set(results) == {"disent", "lc"} and "worst_group_acc" in results["lc"]["test"]


@pytest.mark.slow
@pytest.mark.parametrize("stage, sees, biased_rows", [(debiased_disent, "original", 4000), (debiased_lc, "all", 4200)])
def test_pool_stages_train_their_biased_branch_on_the_rows_chosen(root, stage, sees, biased_rows):
    pool = write_pool(root, 6)
    out = stage.run(params(**{stage.SECTION: {"pool": pool, "biased_sees": sees}}), root)
    assert (out["n_train"], out["n_pool"], out["biased_rows"]) == (4000, 200, biased_rows)
