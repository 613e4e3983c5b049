"""Quality report of a synthetic pool (metrics/inject.json): is it bias-conflicting, does it keep its
label, is it balanced, how far is it from real images?

- colour_conflict_fraction: for colour-biased data, the share of samples whose measured colour
  (nearest LfF palette colour of the foreground) is not their label's colour;
- label_fidelity: accuracy of the label judge (stage train_judge: a classifier trained on data without
  the bias, used for evaluation only) against the synthetic labels;
- faithful_conflict_fraction: both at once, per sample: the judge agrees with the label and the
  measured colour is another class's;
- bias_conflict_fraction, faithful_bias_conflict_fraction, bias_from_style_fraction: the same for any
  bias mechanism (background, corruption, a folder's own), with the bias read by the bias judge
  (trained on bias labels, evaluation only) instead of measured from pixels;
- bias_deviation (judged): per class, the mean over bias values of |frequency − target|, the target
  uniform over the values other than the class's own (the fair generator's aim, diffusion/fair.py;
  the seed's deviation from a non-uniform target), averaged over classes;
- bias_imbalance: the mean pairwise gap of the measured-colour frequencies within each class, averaged
  over classes (0 = every colour equally frequent in every class);
- frechet_distance: between synthetic and real test images in the penultimate-layer features of the
  vanilla classifier (FID's formula, Heusel et al. 2017, with that network instead of Inception).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from diffinject.data.colour import nearest_palette_colour
from diffinject.models.classifier import to_unit_float


def to_grey(images: torch.Tensor) -> torch.Tensor:
    """Colour-blind view of uint8 (N, 3, H, W) images: the per-pixel max over channels, stretched so
    each image's brightest pixel is 255, repeated on 3 channels (the judge keeps the RGB input shape)."""
    grey = images.max(dim=1, keepdim=True).values.float()  # (N, 1, H, W)
    peak = grey.flatten(1).max(1).values.clamp_min(1).view(-1, 1, 1, 1)
    return (grey * 255 / peak).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def colour_conflict_fraction(images: torch.Tensor, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """(share of images whose measured colour is not their label's, measured colour per image)."""
    colour = nearest_palette_colour(images.permute(0, 2, 3, 1).numpy())
    return float(np.mean(colour != targets)), colour


def faithful_conflict_fraction(judged: np.ndarray, colour: np.ndarray, targets: np.ndarray) -> float:
    """Share of samples debiasing can use: the colour-blind judge sees the label's digit and the
    measured colour is another class's (palette colour c is class c's bias colour)."""
    return float(np.mean((judged == targets) & (colour != targets)))


def class_frequencies(targets: np.ndarray, bias: np.ndarray, n_bias: int):
    """(label, (n_bias,) bias-value frequencies among the label's samples) for each label present."""
    for label in np.unique(targets):
        yield int(label), np.bincount(bias[targets == label], minlength=n_bias)[:n_bias] / max(1, int((targets == label).sum()))


def bias_imbalance(targets: np.ndarray, bias: np.ndarray, n_bias: int) -> float:
    """Mean over classes of the mean pairwise |f_a − f_b| of bias-value frequencies f within the class."""
    return float(np.mean([np.mean([abs(freq[a] - freq[b]) for a, b in itertools.combinations(range(n_bias), 2)])
                          for _, freq in class_frequencies(targets, bias, n_bias)]))


def conflict_target(label: int, n_values: int) -> np.ndarray:
    """(n_values,) the fair target of a synthetic image labelled `label`: uniform over the other values."""
    target = np.full(n_values, 1.0 / (n_values - 1))
    target[label] = 0.0
    return target


def bias_deviation(targets: np.ndarray, bias: np.ndarray, n_values: int) -> float:
    """Mean over classes of mean_k |f_k − target_k|, f the class's bias-value frequencies (`conflict_target`)."""
    return float(np.mean([np.abs(freq - conflict_target(label, n_values)).mean()
                          for label, freq in class_frequencies(targets, bias, n_values)]))


@torch.no_grad()
def penultimate_features(net: nn.Module, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """The input of the network's last Linear layer (its feature vector) for uint8 images."""
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    handle = last.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach().cpu()))
    try:
        net.eval()
        for start in range(0, len(images), batch_size):
            net(to_unit_float(images[start:start + batch_size]))
    finally:
        handle.remove()
    return torch.cat(captured).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^½).

    Tr((Σ_a Σ_b)^½) is taken as Σ √λ over the eigenvalues of the symmetric Σ_a^½ Σ_b Σ_a^½ (same
    spectrum): ReLU features have dead units, so the covariances are singular and a general matrix
    square root (scipy's sqrtm) warns and can return complex noise; symmetric eigendecompositions do not.
    """
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


def pool_report(images: torch.Tensor, pool: pd.DataFrame, n_classes: int, colour_biased: bool,
                judged: np.ndarray | None = None, vanilla: nn.Module | None = None,
                reference: torch.Tensor | None = None, bias_judged: np.ndarray | None = None,
                aligned_bias: np.ndarray | None = None) -> dict[str, Any]:
    """The quality report of a synthetic pool (`images` in the order of the manifest `pool`: target,
    content_target, style_target, label_from). `colour_biased`: the measured colour is the bias (our
    LfF colouring); `judged`: the colour-blind judge's predictions on the grey pool; `vanilla` and
    `reference` (real test images): the Fréchet distance; `bias_judged` (the bias judge's predictions)
    and `aligned_bias` (per class, its aligned bias value): the bias conflicts of any mechanism. A part
    whose input is None is left out."""
    targets = pool["target"].to_numpy()
    report: dict[str, Any] = {"n_samples": len(pool), "label_from": str(pool["label_from"].iloc[0])}
    colour = None
    if colour_biased and images.shape[1] == 3:
        fraction, colour = colour_conflict_fraction(images, targets)
        report["colour_conflict_fraction"] = fraction
        report["bias_imbalance"] = bias_imbalance(targets, colour, n_classes)
        report["colour_from_style_fraction"] = float(np.mean(colour == pool["style_target"].to_numpy()))
    if judged is not None:
        report["label_fidelity"] = float(np.mean(judged == targets))
        report["judge_agrees_with_content"] = float(np.mean(judged == pool["content_target"].to_numpy()))
        report["judge_agrees_with_style"] = float(np.mean(judged == pool["style_target"].to_numpy()))
        if colour is not None:
            report["faithful_conflict_fraction"] = faithful_conflict_fraction(judged, colour, targets)
    if bias_judged is not None and aligned_bias is not None:
        conflict = bias_judged != aligned_bias[targets]
        report["bias_conflict_fraction"] = float(conflict.mean())
        report["bias_from_style_fraction"] = float(np.mean(bias_judged == aligned_bias[pool["style_target"].to_numpy()]))
        report["bias_imbalance_judged"] = bias_imbalance(targets, bias_judged, int(bias_judged.max()) + 1)
        report["bias_deviation"] = bias_deviation(targets, bias_judged, max(n_classes, int(bias_judged.max()) + 1))
        if judged is not None:
            report["faithful_bias_conflict_fraction"] = float(np.mean((judged == targets) & conflict))
    if vanilla is not None and reference is not None:
        report["frechet_distance"] = frechet_distance(penultimate_features(vanilla, images),
                                                      penultimate_features(vanilla, reference))
    return report
