"""The autoencoder network of the ae_debias baseline and cls ∘ AE, the network it saves: plain modules,
which `build` rebuilds for a checkpoint with `front: "ae"` (the training lives in models/ae_debias.py,
so loading a classifier does not depend on how the AE was trained)."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from diffinject.errors import DiffinjectError
from diffinject.models.networks import NetConfig, build_network

# model.json's `front` for cls ∘ AE (checkpoint.load_classifier finds this module by it)
ARCHITECTURE = "ae"

# Channels of the AE's first feature map; the second has twice as many.
DEFAULT_AE_WIDTH = 32


class ConvAutoencoder(nn.Module):
    """A small U-Net: two stride-2 3x3 convs down (H -> H/2 -> H/4, 28 -> 14 -> 7), two stride-2 4x4
    transposed convs up, each up level concatenated with the encoder's features of its size (the input
    itself at the last level), and a linear 3x3 conv: (B, C, H, W) in [0, 1] -> (B, C, H, W), near [0, 1].

    As the seed's default AE ("old", models/autoencoder.py): a U-Net with skips and no output
    activation. Measured on the Colored MNIST train split (Adam 1e-3, batch 128): with a sigmoid output,
    with or without skips, the reconstruction pre-training collapsed to black images (MSE 0.037-0.040
    after 160-480 steps = mean(x²) 0.0397: the classifier then saw blank images); with the linear output
    it reached MSE 0.0005 in 160 steps. Sizes not divisible by 4 are resized to the encoder's (bilinear)
    before each concatenation.
    """

    def __init__(self, channels: int, width: int = DEFAULT_AE_WIDTH):
        super().__init__()
        if channels < 1 or width < 1:
            raise DiffinjectError(f"ConvAutoencoder: channels {channels} and width {width} must be >= 1")
        self.down1 = nn.Sequential(nn.Conv2d(channels, width, kernel_size=3, stride=2, padding=1), nn.ReLU())
        self.down2 = nn.Sequential(nn.Conv2d(width, 2 * width, kernel_size=3, stride=2, padding=1), nn.ReLU())
        # kernel 4, stride 2, padding 1 exactly doubles the size: (n − 1)·2 − 2 + 4 = 2n
        self.up2 = nn.Sequential(nn.ConvTranspose2d(2 * width, width, kernel_size=4, stride=2, padding=1), nn.ReLU())
        self.up1 = nn.Sequential(nn.ConvTranspose2d(2 * width, width, kernel_size=4, stride=2, padding=1), nn.ReLU())
        self.out = nn.Conv2d(width + channels, channels, kernel_size=3, padding=1)

    @staticmethod
    def _fit(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if t.shape[-2:] == like.shape[-2:]:
            return t
        return F.interpolate(t, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = self.down1(x)  # (B, w, ⌈H/2⌉, ⌈W/2⌉)
        h2 = self.down2(h1)  # (B, 2w, ⌈H/4⌉, ...)
        u2 = self._fit(self.up2(h2), h1)  # (B, w, ⌈H/2⌉, ...)
        u1 = self._fit(self.up1(torch.cat([u2, h1], 1)), x)  # (B, w, H, W)
        return self.out(torch.cat([u1, x], 1))  # (B, C, H, W)



class AEClassifier(nn.Module):
    """cls ∘ AE: the network that is selected, saved (keys `ae.*`, `classifier.*`) and evaluated."""

    def __init__(self, ae: nn.Module, classifier: nn.Module):
        super().__init__()
        self.ae = ae
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.ae(x))  # (B, C, H, W) in [0, 1] -> (B, num_classes)


def build(cfg: NetConfig) -> AEClassifier:
    """cls ∘ AE for a checkpoint of front "ae": the autoencoder of its width before `cfg`'s network."""
    cfg.check()
    return AEClassifier(ConvAutoencoder(cfg.image_shape[0], cfg.front_width or DEFAULT_AE_WIDTH),
                        build_network(replace(cfg, front=None, front_width=None)))
