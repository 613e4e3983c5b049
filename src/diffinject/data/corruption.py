"""The corruption bias mechanism, as Corrupted CIFAR-10 (Hendrycks & Dietterich 2019, a bias attribute in
LfF and DisEnt): bias value v is the corruption CORRUPTIONS[v] of the grey digit (noise, blur,
pixelation, contrast, JPEG...), at one fixed, moderate severity, written as three equal channels.

Each corruption maps grey images x, (n, H, W) float32 in [0, 1], to corrupted ones (clipped later).
Severities are fixed and moderate, picked by eye on 28 px MNIST and Fashion-MNIST: the digit stays
readable, and the ten stay distinguishable from one another (tests/test_bias_mechanisms.py). Sizes in
pixels are for 28 px and scale with the image side.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from diffinject.data.colour import COLORIZE_CHUNK

GAUSSIAN_NOISE_STD = 0.2
IMPULSE_FRACTION = 0.08  # of pixels, half set to white (salt), half to black (pepper)
GAUSSIAN_BLUR_SIGMA = 1.0  # px at 28 px
MOTION_BLUR_LENGTH = 7  # px at 28 px, a horizontal box
PIXELATE_FRACTION = 0.36  # the side shrinks to 36 % (28 -> 10 blocks), then back with nearest neighbour
CONTRAST_FACTOR = 0.35  # distance to the image mean kept
JPEG_QUALITY = 8
BRIGHTNESS_FLOOR = 0.45  # added to every pixel, so black becomes mid grey (the stroke saturates)
SPECKLE_STD = 0.5  # multiplicative: the stroke gets grainy, the black background stays black
FOG_AMPLITUDE = 0.5  # a smooth random field (a 4x4 grid, bilinear) added behind the digit
FOG_GRID = 4


def _scaled(pixels: float, side: int) -> float:
    return pixels * side / 28


def _convolve(x: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """1-D convolution of every image along `axis` (1 rows, 2 columns), edges repeated."""
    r = len(kernel) // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    padded = np.pad(x, pad, mode="edge")
    n = x.shape[axis]
    out = np.zeros_like(x)
    for k, w in enumerate(kernel):  # a handful of shifted, weighted copies: cheap at these kernel sizes
        out += w * np.take(padded, np.arange(k, k + n), axis=axis)
    return out


def _gaussian_kernel(sigma: float) -> np.ndarray:
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _resize_matrix(n_out: int, n_in: int, mode: str) -> np.ndarray:
    """(n_out, n_in) matrix: 'mean' averages the inputs falling into each output block, 'nearest'
    copies the block an output falls into, 'linear' interpolates between grid points."""
    if mode == "linear":
        pos = np.linspace(0, n_in - 1, n_out)
        lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
        frac = pos - lo
        m = np.zeros((n_out, n_in), np.float32)
        m[np.arange(n_out), lo] = 1 - frac
        m[np.arange(n_out), lo + 1] = frac
        return m
    if mode == "mean":
        block = np.arange(n_in) * n_out // n_in  # output block of each input pixel
        m = (block[None, :] == np.arange(n_out)[:, None]).astype(np.float32)
        return m / m.sum(1, keepdims=True)
    block = np.arange(n_out) * n_in // n_out  # 'nearest': input block of each output pixel
    return (block[:, None] == np.arange(n_in)[None, :]).astype(np.float32)


def _resize(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    return np.einsum("ih,nhw,jw->nij", rows, x, cols, optimize=True)


def gaussian_noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x + rng.standard_normal(x.shape, dtype=np.float32) * GAUSSIAN_NOISE_STD


def impulse_noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    u = rng.random(x.shape, dtype=np.float32)
    out = x.copy()
    out[u < IMPULSE_FRACTION / 2] = 0.0
    out[(u >= IMPULSE_FRACTION / 2) & (u < IMPULSE_FRACTION)] = 1.0
    return out


def gaussian_blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    kernel = _gaussian_kernel(_scaled(GAUSSIAN_BLUR_SIGMA, x.shape[1]))
    return _convolve(_convolve(x, kernel, 1), kernel, 2)


def motion_blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    length = max(3, int(round(_scaled(MOTION_BLUR_LENGTH, x.shape[2]))) | 1)  # odd, so it stays centred
    return _convolve(x, np.full(length, 1 / length, np.float32), 2)


def pixelate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[1:]
    sh, sw = max(2, round(h * PIXELATE_FRACTION)), max(2, round(w * PIXELATE_FRACTION))
    small = _resize(x, _resize_matrix(sh, h, "mean"), _resize_matrix(sw, w, "mean"))
    return _resize(small, _resize_matrix(h, sh, "nearest"), _resize_matrix(w, sw, "nearest"))


def low_contrast(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mean = x.mean(axis=(1, 2), keepdims=True)
    return (x - mean) * CONTRAST_FACTOR + mean


def jpeg(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """JPEG at a low quality, one image at a time through PIL (libjpeg is deterministic)."""
    out = np.empty_like(x)
    for k, img in enumerate(np.rint(x * 255).astype(np.uint8)):
        buffer = io.BytesIO()
        Image.fromarray(img, mode="L").save(buffer, format="JPEG", quality=JPEG_QUALITY)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out[k] = np.asarray(decoded, dtype=np.float32) / 255
    return out


def brightness(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x + BRIGHTNESS_FLOOR


def speckle_noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x + x * rng.standard_normal(x.shape, dtype=np.float32) * SPECKLE_STD


def fog(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[1:]
    grid = rng.random((len(x), FOG_GRID, FOG_GRID), dtype=np.float32)
    field = _resize(grid, _resize_matrix(h, FOG_GRID, "linear"), _resize_matrix(w, FOG_GRID, "linear"))
    return x + FOG_AMPLITUDE * field


# Bias value v is CORRUPTIONS[v].
CORRUPTIONS: tuple[tuple[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]], ...] = (
    ("gaussian_noise", gaussian_noise),
    ("impulse_noise", impulse_noise),
    ("gaussian_blur", gaussian_blur),
    ("motion_blur", motion_blur),
    ("pixelate", pixelate),
    ("low_contrast", low_contrast),
    ("jpeg", jpeg),
    ("brightness", brightness),
    ("speckle_noise", speckle_noise),
    ("fog", fog),
)
CORRUPTION_NAMES = tuple(name for name, _ in CORRUPTIONS)


def corrupt_grey(gray: np.ndarray, bias: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Corrupt each grey image by its bias label's corruption; (N, H, W, 3) uint8, three equal channels.

    Corruption by corruption (bias 0 first), in chunks of COLORIZE_CHUNK images, so the random draws
    depend on the images and the rng only, never on timing or threads."""
    out = np.empty((*gray.shape, 3), dtype=np.uint8)
    for value, (_, corruption) in enumerate(CORRUPTIONS):
        rows = np.flatnonzero(bias == value)
        for start in range(0, len(rows), COLORIZE_CHUNK):
            part = rows[start : start + COLORIZE_CHUNK]
            x = corruption(gray[part].astype(np.float32) / 255, rng)
            out[part] = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)[..., None]
    return out
