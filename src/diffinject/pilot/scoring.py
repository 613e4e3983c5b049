"""How the injection pilot (`injection.auto`) scores a candidate: before the pool is generated, each candidate setting
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

A score on 128 images is noisy (a small gap once decided many points of test accuracy:
docs/label_in_generator.md, "The pilot's rungs"), so every
score carries a bootstrap interval, and candidates whose intervals reach the best one's generate more
images (successive halving, `injection.pilot_rungs`) until one is ahead or the rungs run out.
"""

from __future__ import annotations

import numpy as np
import torch

BOOTSTRAP_DRAWS = 1000
INTERVAL_LEVEL = 0.95


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


def image_terms(targets: np.ndarray, biased_pred: np.ndarray, reference_pred: np.ndarray,
                distance: np.ndarray, reference_distance: float, trust: float = 1.0) -> dict[str, np.ndarray]:
    """Per image: its contribution to the score and the three terms (module docstring); arrays (n,)."""
    conflict = biased_pred != targets
    fidelity = reference_pred == targets
    diversity = np.minimum(1.0, distance / max(reference_distance, 1e-8))
    weight = (1.0 - trust) + trust * conflict
    return {"score": fidelity * diversity * weight, "conflict": conflict, "fidelity": fidelity,
            "diversity": diversity, "useful": conflict & fidelity}


def score_pilot(targets: np.ndarray, biased_pred: np.ndarray, reference_pred: np.ndarray,
                distance: np.ndarray, reference_distance: float, trust: float = 1.0) -> dict[str, float]:
    """The pilot's numbers for one candidate (module docstring); all per-sample arrays are (n,)."""
    terms = image_terms(targets, biased_pred, reference_pred, distance, reference_distance, trust)
    return {key: float(np.mean(values)) for key, values in terms.items()}


def bootstrap_interval(values: np.ndarray, seed: int, draws: int = BOOTSTRAP_DRAWS,
                       level: float = INTERVAL_LEVEL) -> tuple[float, float]:
    """The percentile bootstrap interval of mean(values) (seeded: the same values give the same interval)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (draws, len(values)))].mean(1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def still_in_the_race(scores: list[np.ndarray], seed: int, draws: int = BOOTSTRAP_DRAWS,
                      level: float = INTERVAL_LEVEL) -> list[int]:
    """The candidates the data cannot yet tell from the best: those whose paired bootstrap interval of
    (best's score - theirs) reaches 0. `scores` are the per-image contributions, equally many per
    candidate; image i of two candidates of one label rule comes from the same pair and noise, so the
    difference is far less noisy than either score (across rules the images are independent, and the
    same resampled indices still bootstrap the difference)."""
    means = [float(np.mean(values)) for values in scores]
    best = int(np.argmax(means))
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(scores[best]), (draws, len(scores[best])))
    best_means = scores[best][rows].mean(1)
    alive = []
    for k, values in enumerate(scores):
        own = rows if len(values) == len(scores[best]) else rng.integers(0, len(values), (draws, len(values)))  # unpaired
        gaps = best_means - values[own].mean(1)
        if k == best or np.quantile(gaps, (1 - level) / 2) <= 0:
            alive.append(k)
    return alive
