"""Colored MNIST, following the LfF protocol (Nam et al. 2020, `data/colored_mnist_protocol.py` and
`make_dataset.py` of the LfF code): each class has a mean colour; an image's foreground takes its bias
colour plus Gaussian noise (`color_std`, LfF severity 4 = 0.005), the background stays black."""

from __future__ import annotations

import numpy as np

# LfF's `colors.th`, RGB in [0, 1], indexed by bias (colour) label 0..9.
LFF_PALETTE = np.array(
    [
        (0.984, 0.313, 0.169),
        (0.991, 0.916, 0.352),
        (0.673, 0.461, 0.580),
        (0.783, 0.832, 0.601),
        (0.088, 0.778, 0.982),
        (0.321, 0.961, 0.446),
        (0.025, 0.236, 0.759),
        (0.555, 0.102, 0.762),
        (0.208, 0.393, 0.019),
        (0.834, 0.202, 0.267),
    ],
    dtype=np.float64,
)


COLORIZE_CHUNK = 2048  # images per float64 chunk (~38 MiB at 28x28x3)


def assign_bias_labels(targets: np.ndarray, aligned_ratio: float, n_bias: int) -> np.ndarray:
    """Bias (colour) label per sample, exactly as LfF's `make_attr_labels`.

    Within each class, in the order given (shuffle first), a fraction `aligned_ratio` takes the
    class's own colour and the rest is spread evenly over the other colours. The per-class counts are
    set by rounding cumulative milestones, so they are exact rather than sampled: 1 % of 400 gives
    4 conflicts. `aligned_ratio = 1 / n_bias` makes every colour equally likely (an unbiased split).
    """
    targets = np.asarray(targets)
    n_classes = n_bias
    ratios = aligned_ratio * np.eye(n_classes) + (1 - aligned_ratio) / (n_classes - 1) * (1 - np.eye(n_classes))
    bias = np.empty_like(targets)
    for label in range(n_classes):
        idx = np.flatnonzero(targets == label)
        milestones = np.round(len(idx) * np.cumsum(ratios[label]))  # (n_bias,)
        # Sample j gets the first colour whose milestone exceeds j.
        bias[idx] = np.searchsorted(milestones, np.arange(len(idx)), side="right")
    return bias


def colorize(gray: np.ndarray, bias: np.ndarray, color_std: float, rng: np.random.Generator) -> np.ndarray:
    """Colour grey digits by their bias label.

    gray: (N, H, W) uint8 in [0, 255]; bias: (N,) ints indexing LFF_PALETTE.
    Returns (N, H, W, 3) uint8: clamp(palette[bias] + N(0, color_std)) * gray, so the background
    (gray = 0) stays exactly zero and the foreground carries the colour.
    """
    noise = rng.standard_normal((len(bias), 3)) * color_std
    colour = np.clip(LFF_PALETTE[bias] + noise, 0.0, 1.0)  # (N, 3)
    out = np.empty((*gray.shape, 3), dtype=np.uint8)
    # In chunks: the float64 product of 60,000 images would need gigabytes at once.
    for start in range(0, len(gray), COLORIZE_CHUNK):
        part = slice(start, start + COLORIZE_CHUNK)
        rgb = gray[part, ..., None].astype(np.float64) * colour[part, None, None, :]  # (n, H, W, 3)
        out[part] = np.clip(np.rint(rgb), 0, 255)
    return out


# The brightest pixels of a digit are where the grey stroke was (near) 255, so their RGB is the colour.
FOREGROUND_PIXELS = 10


def foreground_colour(images: np.ndarray) -> np.ndarray:
    """Measured colour in [0, 1] of each image's foreground: the mean RGB of its brightest pixels.

    images: (N, H, W, 3) uint8. Returns (N, 3)."""
    flat = images.reshape(len(images), -1, 3).astype(np.float64)  # (N, HW, 3)
    brightest = np.argsort(flat.sum(2), axis=1)[:, -FOREGROUND_PIXELS:]  # (N, k)
    return np.take_along_axis(flat, brightest[..., None], axis=1).mean(1) / 255


def nearest_palette_colour(images: np.ndarray) -> np.ndarray:
    """Index of the LfF palette colour nearest to each image's foreground colour, (N,)."""
    colour = foreground_colour(images)
    return np.linalg.norm(colour[:, None, :] - LFF_PALETTE[None], axis=2).argmin(1)
