"""The injection pilot (`injection.auto`): before the pool is generated, each candidate setting
(operator, sites, window, gamma, label rule) makes a small pilot pool from the same pairs and noise, and
is scored without a bias label:

    conflict_i  = the biased model (the bias proxy) does not predict the synthetic label y_i
    fidelity_i  = a reference model that is not the biased one (LfF by default) predicts y_i
    diversity_i = min(1, d_i / d_ref): d_i the pixel distance from image i to the nearest mined
                  original (the inverted contents), d_ref the median distance from a mined original to
                  the nearest other one (how far apart two real conflicts are); a copy scores 0
    score       = mean_i(fidelity_i · diversity_i · ((1 - trust) + trust · conflict_i))

With full trust a sample counts only when it is all three at once: a new image the biased model gets
wrong and the reference model reads as its label. `trust` is how far the conflict term can be believed:
a miss of the biased model means "the bias points elsewhere" only as far as the biased model reads the
bias and not the label. On the unbiased valid split a pure-bias model scores chance (1/C) and a label
reader more, so trust = 1 - kappa, kappa = (valid_acc - 1/C) / (1 - 1/C) clipped to [0, 1]
(`conflict_trust`). Labels only: no bias label is read. Measured on every development mechanism in
docs/injection_pilot.md: a GCE-biased MLP that half reads the digit (corrupted digits) otherwise
rewards images it cannot read for any reason. The highest score wins; a tie goes to the earlier
candidate (the grid lists the cheaper ones first).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch

from diffinject.diffusion.injection import batch_generator, make_pairs
from diffinject.diffusion.inversion_store import InvertedSet
from diffinject.diffusion.model import to_uint8
from diffinject.diffusion.injection_params import Candidate
from diffinject.diffusion.sampler import InjectionSampler
from diffinject.diffusion.sites import Features

# Added to the pipeline seed: the pilot's pairs and noise are not the pool's first batch replayed.
SEED_OFFSET = 104_729


def nearest_distance(images: torch.Tensor, originals: torch.Tensor, exclude_self: bool = False) -> np.ndarray:
    """Per image, the RMS pixel distance (uint8 images scaled to [0, 1]) to the nearest of `originals`."""
    a = images.flatten(1).float() / 255
    b = originals.flatten(1).float() / 255
    # exact differences, not the matmul expansion: a copy must measure 0, not float noise
    d = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist") / np.sqrt(a.shape[1])  # (n, m)
    if exclude_self:
        d.fill_diagonal_(float("inf"))
    return d.min(1).values.numpy()


def conflict_trust(biased_valid_acc: float, n_classes: int) -> float:
    """1 - kappa of the biased model on the unbiased valid split (module docstring): 1 at chance, 0 when
    it reads every label."""
    chance = 1.0 / n_classes
    kappa = (biased_valid_acc - chance) / (1.0 - chance)
    return float(np.clip(1.0 - kappa, 0.0, 1.0))


def score_pilot(targets: np.ndarray, biased_pred: np.ndarray, reference_pred: np.ndarray,
                distance: np.ndarray, reference_distance: float, trust: float = 1.0) -> dict[str, float]:
    """The pilot's numbers for one candidate (module docstring); all per-sample arrays are (n,)."""
    conflict = biased_pred != targets
    fidelity = reference_pred == targets
    diversity = np.minimum(1.0, distance / max(reference_distance, 1e-8))
    weight = (1.0 - trust) + trust * conflict
    return {"score": float(np.mean(fidelity * diversity * weight)), "conflict": float(conflict.mean()),
            "fidelity": float(fidelity.mean()), "diversity": float(diversity.mean()),
            "useful": float(np.mean(conflict & fidelity))}


@dataclass
class PilotPool:
    images: torch.Tensor  # (n, C, H, W) uint8
    targets: np.ndarray  # (n,) the synthetic labels


def generate_pilot(unet, scheduler, candidate: Candidate, base_config, contents: InvertedSet, styles: InvertedSet,
                   features: Features, n: int, seed: int, batch_size: int) -> PilotPool:
    """n pilot images of one candidate; the pairs and noise depend only on the seed and the label rule,
    so candidates of one rule are compared on the same pairs."""
    pairs = make_pairs(contents.targets.numpy(), styles.targets.numpy(), n, seed + SEED_OFFSET, candidate.label_from,
                       None if contents.proxy is None else contents.proxy.numpy(),
                       None if styles.proxy is None else styles.proxy.numpy())
    config = replace(base_config, **candidate.as_params())  # the window starts at the params' t_edit
    device = next(unet.parameters()).device
    chunks = []
    with InjectionSampler(unet, scheduler, config) as sampler:
        for b, start in enumerate(range(0, n, batch_size)):
            c, s = pairs.content[start:start + batch_size], pairs.style[start:start + batch_size]
            site_features = {site: tuple(f[:, c].to(device) for f in features[site]) for site in candidate.sites}
            x = sampler.generate(styles.x_T[s].to(device), site_features, contents.timesteps,
                                 batch_generator(seed + SEED_OFFSET, b, device))
            chunks.append(to_uint8(x).cpu())
    source = contents.targets[pairs.content] if candidate.label_from == "content" else styles.targets[pairs.style]
    return PilotPool(torch.cat(chunks), source.numpy())


@dataclass
class PilotResult:
    rows: list[dict]  # per candidate: name, its injection keys, the scores
    winner: int  # index into rows
    pools: list[PilotPool]


def run_pilot(unet, scheduler, base_config, contents: InvertedSet, styles: InvertedSet, features: Features,
              candidates: Sequence[Candidate], n: int, seed: int, batch_size: int,
              predict_biased: Callable[[torch.Tensor], np.ndarray],
              predict_reference: Callable[[torch.Tensor], np.ndarray],
              originals: torch.Tensor, on_candidate: Callable[[str], None] | None = None,
              other_references: dict[str, Callable[[torch.Tensor], np.ndarray]] | None = None,
              trust: float = 1.0) -> PilotResult:
    """Generate and score every candidate; `originals` are the mined images as uint8 (the contents).
    `other_references` (name -> predictor) are scored beside, as `score_<name>`, for comparison only;
    `trust` weighs the conflict term (`conflict_trust`)."""
    reference_distance = float(np.median(nearest_distance(originals, originals, exclude_self=True)))
    rows, pools = [], []
    for candidate in candidates:
        pool = generate_pilot(unet, scheduler, candidate, base_config, contents, styles, features, n, seed, batch_size)
        biased, distance = predict_biased(pool.images), nearest_distance(pool.images, originals)
        scores = score_pilot(pool.targets, biased, predict_reference(pool.images), distance, reference_distance, trust)
        row = {"name": candidate.name, **candidate.as_params(), **{k: round(v, 4) for k, v in scores.items()}}
        for name, predict in (other_references or {}).items():
            other = score_pilot(pool.targets, biased, predict(pool.images), distance, reference_distance, trust)
            row[f"score_{name}"], row[f"fidelity_{name}"] = round(other["score"], 4), round(other["fidelity"], 4)
        rows.append(row)
        pools.append(pool)
        if on_candidate is not None:
            on_candidate(candidate.name)
    winner = int(np.argmax([row["score"] for row in rows]))  # argmax keeps the first of equal scores
    return PilotResult(rows, winner, pools)
