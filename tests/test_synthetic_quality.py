import warnings

import numpy as np
import pytest
from scipy import linalg

from diffinject.diffusion.synthetic_quality import faithful_conflict_fraction, frechet_distance


def _reference(a, b):
    """The textbook formula with a general matrix square root (fine on well-conditioned covariances)."""
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a + cov_b - 2 * np.real(linalg.sqrtm(cov_a @ cov_b)))


def test_identical_sets_are_at_distance_zero():
    a = np.random.default_rng(0).normal(size=(500, 8))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-9)


def test_one_dimensional_gaussians():
    # d² between N(μ1, σ1²) and N(μ2, σ2²) is (μ1 − μ2)² + (σ1 − σ2)²: exact for the sample moments
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2000, 1)), 3 * rng.normal(size=(2000, 1)) + 2
    expected = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_matches_the_textbook_formula_on_full_rank_features():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 0.5
    assert frechet_distance(a, b) == pytest.approx(_reference(a, b), rel=1e-7)


def test_dead_units_give_a_finite_distance_without_warnings():
    # ReLU features: some units are 0 for every image, so both covariances are singular
    rng = np.random.default_rng(3)
    a, b = np.maximum(rng.normal(size=(400, 10)), 0), np.maximum(rng.normal(size=(400, 10)) + 0.3, 0)
    a[:, :3] = b[:, :3] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = frechet_distance(a, b)
    assert np.isfinite(d) and d >= 0
    assert d == pytest.approx(frechet_distance(a[:, 3:], b[:, 3:]), rel=1e-9)  # dead units add nothing


def test_faithful_conflicts_need_the_label_seen_and_another_colour():
    targets = np.array([0, 0, 1, 1, 2])
    judged = np.array([0, 0, 1, 2, 2])  # the judge misses sample 3
    colour = np.array([3, 0, 1, 0, 0])  # samples 0, 3, 4 wear another class's colour
    # sample 0: seen and recoloured; 1: aligned colour; 2: aligned; 3: not seen; 4: seen and recoloured
    assert faithful_conflict_fraction(judged, colour, targets) == pytest.approx(2 / 5)
