"""The classifier networks, chosen by params (`*.model`), never by dataset name.

Every network takes float images in [0, 1], shape (B, C, H, W), and returns logits (B, num_classes).
A network built around these (ae_debias's autoencoder front, DisEnt's two encoders) lives in its own
module, which only the stages that build or load it import (`checkpoint.load_classifier`), so an edit
of it re-runs those stages alone.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from diffinject.errors import DiffinjectError, first_line

ARCHS = ("mlp", "resnet18")
FRONTS = (None, "ae")
# LfF's Colored-MNIST MLP (Nam et al. 2020, `module/mlp.py`): three hidden layers of 100 units.
MLP_HIDDEN = 100
MLP_DEPTH = 3
# torchvision's ImageNet statistics, the input normalisation its pretrained ResNet weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class NetConfig:
    """What a checkpoint needs to rebuild its network (saved as model.json beside model.pt)."""

    arch: str  # mlp | resnet18
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W) of the inputs
    # "ae": a convolutional autoencoder of width `front_width` runs before the network (ae_debias,
    # models/autoencoder.py); null: the network alone
    front: str | None = None
    front_width: int | None = None

    def check(self) -> None:
        if self.front not in FRONTS:
            raise DiffinjectError(f"model front {self.front!r}: expected one of {', '.join(map(str, FRONTS))}")
        if self.arch not in ARCHS:
            raise DiffinjectError(f"model architecture {self.arch!r}: expected one of {', '.join(ARCHS)}")
        if self.num_classes < 2:
            raise DiffinjectError(f"number of classes {self.num_classes}: expected at least 2")


class MLP(nn.Module):
    """C·H·W → 100 → 100 → 100 → num_classes, ReLU (LfF's Colored-MNIST model)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = MLP_HIDDEN, depth: int = MLP_DEPTH):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.feature = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.feature(x.flatten(1)))  # (B, C·H·W) -> (B, num_classes)


class ResNet18(nn.Module):
    """torchvision's ResNet18 with a `num_classes` head and ImageNet input normalisation."""

    def __init__(self, num_classes: int, in_channels: int):
        super().__init__()
        if in_channels != len(IMAGENET_MEAN):
            raise DiffinjectError(f"resnet18: images have {in_channels} channels, expected {len(IMAGENET_MEAN)} (RGB)")
        self.body = torchvision.models.resnet18(weights=None)
        self.body.fc = nn.Linear(self.body.fc.in_features, num_classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std)


def build_network(cfg: NetConfig) -> nn.Module:
    """`cfg`'s architecture alone (its front, if any, is the front's module's: `checkpoint.load_classifier`)."""
    cfg.check()
    channels, height, width = cfg.image_shape
    return MLP(channels * height * width, cfg.num_classes) if cfg.arch == "mlp" else ResNet18(cfg.num_classes, channels)


def read_state_dict(path: Path) -> dict:
    """A state_dict file, loaded with weights_only=True; anything else is a one-line DiffinjectError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        # weights_only=True refuses anything but tensors and plain containers: never unpickle code.
        raise DiffinjectError(
            f"{path}: not a loadable weights-only state_dict (torch.load(weights_only=True): {first_line(exc)})"
        ) from exc
    if not isinstance(state, dict):
        raise DiffinjectError(f"{path}: expected a state_dict (a mapping of tensors), got {type(state).__name__}")
    return state


def load_imagenet_weights(net: nn.Module, path: str | Path, param: str) -> None:
    """Load a local torchvision resnet18 ImageNet state_dict (e.g. resnet18-f37072fd.pth) into every
    layer but the classification head. `param` names the parameter that gave the path."""
    path = Path(path)
    if not isinstance(net, ResNet18):
        raise DiffinjectError(f"params '{param}': pretrained weights are for resnet18 only (got a {type(net).__name__})")
    if not path.is_file():
        raise DiffinjectError(f"params '{param}': {path} not found (expected a torchvision resnet18 state_dict .pth)")
    state = read_state_dict(path)
    body = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.body.load_state_dict(body, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise DiffinjectError(
            f"{path}: not resnet18 ImageNet weights (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
