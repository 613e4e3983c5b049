"""The trained models the pilot reads a label from (`injection.pilot_reference`; the pool filter and
the label-reader guidance read the same one), and their loading. Never the biased model: it is the
bias proxy."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffinject.errors import DiffinjectError
from diffinject.models import disent_net
from diffinject.models.checkpoint import load_classifier
from diffinject.stages.paths import METRICS, model_dir

# Models the pilot may read a label fidelity from.
REFERENCES = ("lff", "disent", "lc", "vanilla")


def load_models(root: Path, names, n_classes: int, shape: tuple[int, ...], device: torch.device, needed_by: str,
                switch: str, off: str = "false") -> dict:
    """name -> the trained classifier in models/<name>, in eval mode on `device`; a missing one is a
    one-line error naming what needs it and the param (`switch`) and value (`off`) that turn that off."""
    models = {}
    for name in names:
        models[name], _, _ = load_classifier(model_dir(root, name), num_classes=n_classes, image_shape=shape,
                                             missing_hint=f"{needed_by} needs models/{name}: run `dvc repro {name}` "
                                                          f"(or set {switch}: {off})", architectures=(disent_net,))
        models[name] = models[name].to(device).eval()
    return models


def resolve_reference(root: Path, name: str) -> str:
    """`injection.pilot_reference`, or for `auto` the reference model with the best valid accuracy in
    metrics/<model>.json (labels only: the valid split's accuracy reads no bias label)."""
    if name != "auto":
        return name
    valid = {}
    for model in REFERENCES:
        path = root / METRICS / f"{model}.json"
        if path.is_file() and (model_dir(root, model) / "model.json").is_file():
            valid[model] = json.loads(path.read_text()).get("valid", {}).get("acc", float("-inf"))
    if not valid:
        raise DiffinjectError(f"params 'injection.pilot_reference': auto needs one of {', '.join(REFERENCES)} trained "
                              f"(models/<name> and metrics/<name>.json; run `dvc repro lff`)")
    return max(valid, key=valid.get)  # the first listed wins a tie
