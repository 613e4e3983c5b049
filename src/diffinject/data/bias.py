"""How a grey source's bias label (0..9) is written into its images: `data.bias`.

- colour: LfF Colored MNIST (`colour.colorize`): the stroke takes the bias colour, the background stays
  black.
- background: the stroke stays white and the background takes the bias colour (a darkened LfF palette
  colour with the same per-image noise), so the bias is the larger, not the thinner, part of the image.
- corruption: as Corrupted CIFAR-10 (Hendrycks & Dietterich 2019, a bias attribute in LfF and DisEnt):
  each bias value is one image corruption of the grey digit (noise, blur, pixelation, contrast, JPEG...),
  at one fixed, moderate severity, written as three equal channels. No colour carries the bias, so a
  model must learn a texture/frequency shortcut rather than a hue (`data.corruption`).

`render` is the one entry point (prepare and prepare_palette call it); `measure_bias` reads the bias
back from pixels where that is possible (colour, background), for data validation.
"""

from __future__ import annotations

import numpy as np

from diffinject.data.colour import COLORIZE_CHUNK, LFF_PALETTE, colorize, nearest_palette_colour
from diffinject.data.corruption import corrupt_grey
from diffinject.errors import DiffinjectError

MECHANISMS = ("colour", "background", "corruption")
N_BIAS_VALUES = 10

# --- background -----------------------------------------------------------------------------------

# Background colour = LfF colour x 0.75. At full strength the light palette colours (yellow, luma 0.87;
# pale green, 0.79) are nearly as bright as the white stroke and the digit washes out; x 0.75 keeps
# every stroke at least ~1.5x brighter than its background while the colours stay 0.16 apart (RGB).
BACKGROUND_SCALE = 0.75
BACKGROUND_PALETTE = LFF_PALETTE * BACKGROUND_SCALE
# The darkest pixels of a background-biased image are pure background (gray 0), so their RGB is the colour.
BACKGROUND_PIXELS = 10


def colour_background(gray: np.ndarray, bias: np.ndarray, color_std: float, rng: np.random.Generator) -> np.ndarray:
    """White stroke on a background of the bias colour: out = g + (1 - g) * colour, g = gray / 255.

    Same noise as `colorize`: clamp(palette[bias] + N(0, color_std)), then scaled by BACKGROUND_SCALE."""
    noise = rng.standard_normal((len(bias), 3)) * color_std
    colour = np.clip(LFF_PALETTE[bias] + noise, 0.0, 1.0) * BACKGROUND_SCALE * 255  # (N, 3)
    out = np.empty((*gray.shape, 3), dtype=np.uint8)
    for start in range(0, len(gray), COLORIZE_CHUNK):  # float64 of 60,000 images at once is gigabytes
        part = slice(start, start + COLORIZE_CHUNK)
        g = gray[part, ..., None].astype(np.float64) / 255  # (n, H, W, 1)
        rgb = g * 255 + (1 - g) * colour[part, None, None, :]
        out[part] = np.clip(np.rint(rgb), 0, 255)
    return out


def background_colour(images: np.ndarray) -> np.ndarray:
    """Measured background colour in [0, 1]: the mean RGB of each image's darkest pixels, (N, 3).

    images: (N, H, W, 3) uint8."""
    flat = images.reshape(len(images), -1, 3).astype(np.float64)
    darkest = np.argsort(flat.sum(2), axis=1)[:, :BACKGROUND_PIXELS]
    return np.take_along_axis(flat, darkest[..., None], axis=1).mean(1) / 255


def nearest_background_colour(images: np.ndarray) -> np.ndarray:
    """Index of the (darkened) palette colour nearest to each image's background colour, (N,)."""
    colour = background_colour(images)
    return np.linalg.norm(colour[:, None, :] - BACKGROUND_PALETTE[None], axis=2).argmin(1)


# --- dispatch -------------------------------------------------------------------------------------


def check_mechanism(mechanism: str) -> None:
    """One-line error naming params 'data.bias' unless `mechanism` is one of MECHANISMS."""
    if mechanism not in MECHANISMS:
        raise DiffinjectError(f"params 'data.bias': got {mechanism!r}, expected one of {', '.join(MECHANISMS)}")


def render(gray: np.ndarray, bias: np.ndarray, mechanism: str, color_std: float,
           rng: np.random.Generator) -> np.ndarray:
    """Grey images (N, H, W) uint8 with bias labels (N,) in 0..9 -> (N, H, W, 3) uint8 by `mechanism`.

    `color_std` is the per-image colour noise of colour and background; corruption has no colour."""
    check_mechanism(mechanism)
    bias = np.asarray(bias)
    if len(bias) and (bias.min() < 0 or bias.max() >= N_BIAS_VALUES):
        raise DiffinjectError(f"bias labels must lie in 0..{N_BIAS_VALUES - 1}, got {bias.min()}..{bias.max()}")
    if mechanism == "colour":
        return colorize(gray, bias, color_std, rng)
    if mechanism == "background":
        return colour_background(gray, bias, color_std, rng)
    return corrupt_grey(gray, bias, rng)


def measure_bias(images: np.ndarray, mechanism: str) -> np.ndarray | None:
    """The bias label read back from (N, H, W, 3) uint8 pixels, or None where pixels cannot tell it
    cheaply (corruption: telling ten corruptions apart needs a classifier, not a nearest colour)."""
    if mechanism == "colour":
        return nearest_palette_colour(images)
    if mechanism == "background":
        return nearest_background_colour(images)
    return None
