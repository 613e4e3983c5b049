"""A classifier on disk: a folder with `model.pt` (the network's state_dict, nothing else, so it loads
with `torch.load(weights_only=True)`) and `model.json` (the NetConfig to rebuild the network, plus a
summary of the training run)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import torch
from torch import nn

from diffinject.errors import DiffinjectError
from diffinject.models.networks import NetConfig, build_network, read_state_dict

WEIGHTS_NAME = "model.pt"
CONFIG_NAME = "model.json"


def save_classifier(out_dir: Path, net: nn.Module | dict[str, torch.Tensor], cfg: NetConfig, info: dict[str, Any]) -> None:
    """Write model.pt + model.json into `out_dir` (use `fsutil.atomic_dir` for the folder)."""
    state = net.state_dict() if isinstance(net, nn.Module) else net
    torch.save({k: v.detach().cpu() for k, v in state.items()}, out_dir / WEIGHTS_NAME)
    meta = dict(asdict(cfg), image_shape=list(cfg.image_shape), **info)
    (out_dir / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")


def read_net_config(model_dir: Path) -> tuple[NetConfig, dict[str, Any]]:
    path = model_dir / CONFIG_NAME
    if not path.is_file():
        raise DiffinjectError(f"{path}: not found (a model folder holds {WEIGHTS_NAME} and {CONFIG_NAME})")
    try:
        meta = json.loads(path.read_text())
        cfg = NetConfig(arch=meta["arch"], num_classes=int(meta["num_classes"]), image_shape=tuple(meta["image_shape"]),
                        front=meta.get("front"), front_width=meta.get("front_width"))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DiffinjectError(f"{path}: not a model config (expected JSON with arch, num_classes, image_shape; {exc!r})") from exc
    return cfg, meta


def load_classifier(
    model_dir: str | Path,
    *,
    num_classes: int | None = None,
    image_shape: tuple[int, int, int] | None = None,
    arch: str | None = None,
    missing_hint: str = "",
    architectures: Sequence[ModuleType] = (),
) -> tuple[nn.Module, NetConfig, dict[str, Any]]:
    """Rebuild the network saved in `model_dir` and load its weights.

    A plain network (MLP, ResNet18) is networks.py's. A checkpoint whose model.json names a `composite`
    (DisEnt) or a `front` (ae_debias) is rebuilt by the module of `architectures` whose ARCHITECTURE is
    that name (its `build(cfg)`): the caller imports the modules of the networks it may load, so its
    stage's code deps name them and an edit of one network re-runs only the stages that use it.

    The expectations (`num_classes` of the data, `image_shape` (C, H, W) of its images, `arch`) are
    checked against the checkpoint, so a checkpoint trained on other data or for another architecture
    fails here with one line instead of deep inside a matrix multiply. `missing_hint` says which stage
    writes the folder.
    """
    model_dir = Path(model_dir)
    weights = model_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise DiffinjectError(f"{weights}: model not found{f' ({missing_hint})' if missing_hint else ''}")
    cfg, meta = read_net_config(model_dir)
    if arch is not None and cfg.arch != arch:
        raise DiffinjectError(f"{model_dir}: checkpoint is a {cfg.arch}, expected a {arch}")
    if num_classes is not None and cfg.num_classes != num_classes:
        raise DiffinjectError(f"{model_dir}: checkpoint has {cfg.num_classes} classes, the data has {num_classes}")
    if image_shape is not None and tuple(cfg.image_shape) != tuple(image_shape):
        raise DiffinjectError(
            f"{model_dir}: checkpoint takes images of shape {tuple(cfg.image_shape)} (C, H, W), the data has {tuple(image_shape)}"
        )
    net = _build(model_dir, cfg, meta, architectures)
    state = read_state_dict(weights)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        # RuntimeError's message lists every mismatching key over many lines; keep the first one.
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise DiffinjectError(
            f"{weights}: weights do not fit a {cfg.arch} with {cfg.num_classes} classes as {CONFIG_NAME} says ({detail})"
        ) from exc
    net.eval()
    return net, cfg, meta



def _build(model_dir: Path, cfg: NetConfig, meta: dict[str, Any], architectures: Sequence[ModuleType]) -> nn.Module:
    """The network model.json describes: cfg's own, or a composite's / front's from its module."""
    name = meta.get("composite") or cfg.front
    if name is None:
        return build_network(cfg)
    modules = {module.ARCHITECTURE: module for module in architectures}
    if name not in modules:
        raise DiffinjectError(f"{model_dir / CONFIG_NAME}: a {name!r} network, which this stage does not load "
                              f"(it loads {', '.join(['plain networks', *modules])})")
    return modules[name].build(cfg)
