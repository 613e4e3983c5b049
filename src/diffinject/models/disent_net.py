"""DisEnt's network (Lee et al., NeurIPS 2021): two encoders of the same architecture, an intrinsic one
E_i and a bias one E_b, and two linear classifiers over the concatenated features [z_i, z_b]:
C_i (what is predicted, saved and evaluated) and C_b (the bias side, trained with GCE).

Each encoder is one of our classifier networks with its head removed (the MLP's 100-unit last hidden
layer, ResNet18's 512-d pooled features), so `*.model` chooses DisEnt's backbone as it does every
other row's. A checkpoint says `"composite": "disent"` in model.json and rebuilds through
`models.checkpoint.load_classifier` (given this module) like any other classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from diffinject.models.networks import MLP, NetConfig, ResNet18, build_network

# model.json's `composite` for this network (checkpoint.load_classifier finds this module by it)
COMPOSITE = ARCHITECTURE = "disent"


def headless(net: nn.Module) -> tuple[nn.Module, int]:
    """`net` with its classification head replaced by the identity, and the width of its features."""
    if isinstance(net, MLP):
        width = net.classifier.in_features
        net.classifier = nn.Identity()
    elif isinstance(net, ResNet18):
        width = net.body.fc.in_features
        net.body.fc = nn.Identity()
    else:
        raise TypeError(f"DisEnt needs an MLP or a ResNet18 backbone, got {type(net).__name__}")
    return net, width


class DisEntNet(nn.Module):
    """forward(x) = C_i([E_i(x), E_b(x)]): the intrinsic classifier over both features, as DisEnt
    evaluates. `features` and the two heads are what training uses."""

    def __init__(self, intrinsic: nn.Module, bias: nn.Module, width: int, num_classes: int):
        super().__init__()
        self.intrinsic = intrinsic
        self.bias = bias
        self.fc_i = nn.Linear(2 * width, num_classes)
        self.fc_b = nn.Linear(2 * width, num_classes)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.intrinsic(x), self.bias(x)  # (B, width) each

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z_i, z_b = self.features(x)
        return self.fc_i(torch.cat([z_i, z_b], dim=1))  # (B, num_classes)


def build_disent(cfg: NetConfig) -> DisEntNet:
    """Two headless networks of `cfg`'s architecture and the two heads over their features."""
    intrinsic, width = headless(build_network(cfg))
    bias, _ = headless(build_network(cfg))
    return DisEntNet(intrinsic, bias, width, cfg.num_classes)


build = build_disent  # what checkpoint.load_classifier calls for a checkpoint of this ARCHITECTURE
