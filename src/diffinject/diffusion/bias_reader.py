"""A bias proxy for pairing that reads colour, not shape (`injection.pairing_proxy: channel_stats`).

The default proxy is the biased classifier's prediction. On the mined contents, the images it gets
wrong, it reads the bias for only some of them: on Colored MNIST, 63 % of the mined digits' stroke
colours (docs/fair_generator.md). This reader is a multinomial logistic regression on per-channel
statistics of an image (stroke and background means, the mean and the spread). It is trained on the
train split with the biased classifier's predictions as labels, and no bias label. The statistics
carry colour and almost no shape, so what it learns from those mostly-aligned labels is the colour.
It suits biases that live in colour (stroke, background); a texture bias, such as the corruptions,
needs another reader.
"""

from __future__ import annotations

import torch

STROKE_THRESHOLD = 0.3  # a pixel where any channel exceeds this (of 1) counts as stroke
L2 = 1e-3


def channel_stats(images: torch.Tensor) -> torch.Tensor:
    """(N, 4C) per channel: the mean over stroke pixels, over background pixels, over all, and the std."""
    x = images.float().flatten(2) / 255 if images.dtype == torch.uint8 else images.float().flatten(2)
    stroke = (x.max(1, keepdim=True).values > STROKE_THRESHOLD).float()
    fg = (x * stroke).sum(2) / stroke.sum(2).clamp(min=1)
    bg = (x * (1 - stroke)).sum(2) / (1 - stroke).sum(2).clamp(min=1)
    return torch.cat([fg, bg, x.mean(2), x.std(2)], 1)


class StatsReader:
    """Multinomial logistic regression on standardised channel statistics, fitted by full-batch L-BFGS
    (deterministic on the CPU)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, n_classes: int, steps: int = 200):
        features = channel_stats(images).double()
        self.mean, self.std = features.mean(0), features.std(0) + 1e-6
        z = (features - self.mean) / self.std
        self.weight = torch.zeros(z.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
        self.bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([self.weight, self.bias], max_iter=steps, line_search_fn="strong_wolfe")
        targets = labels.long()

        def loss():
            optimizer.zero_grad()
            value = torch.nn.functional.cross_entropy(z @ self.weight + self.bias, targets) + L2 * (self.weight ** 2).sum()
            value.backward()
            return value

        optimizer.step(loss)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        z = (channel_stats(images).double() - self.mean) / self.std
        return (z @ self.weight + self.bias).argmax(1)
