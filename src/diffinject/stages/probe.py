"""Stage `probe`: what does each UNet site carry, per timestep? Linear probes on the DDPM's features
along the DDIM inversion path of a seeded sample of train images (fit) and valid images (score), for
the class (manifest targets) and the bias proxy (the biased classifier's soft and one-hot predictions);
the true bias only where the manifest has it, to report (diffusion/probes.py) -> metrics/probe.json,
metrics/plots/probe/accuracy.csv and .png. `inject` reads probe.json for `injection.label_from: auto`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from diffinject.config import StageParams, slice_of
from diffinject.data.manifest import read_manifest
from diffinject.data.tensors import ImageTensors, load_split, num_classes_of
from diffinject.devices import inference_device
from diffinject.diffusion.injection_params import InjectionParams
from diffinject.diffusion.model import DiffusionConfig, load_diffusion, to_model_range
from diffinject.diffusion.precision import autocast, resolve_precision
from diffinject.diffusion.probe_report import ProbeParams, save_curves
from diffinject.diffusion.probes import BIAS_EVAL, LABELINGS, path_features, probe_accuracy, probe_labels
from diffinject.diffusion.sites import site_names
from diffinject.fsutil import write_json
from diffinject.models.checkpoint import load_classifier
from diffinject.models.trainer import TrainerConfig
from diffinject.models.training import predict_logits
from diffinject.stages.paths import DIFFUSION, PLOTS, PREPARED, PROBE, missing_model_hint, model_dir

PARAMS = StageParams({"trainer": TrainerConfig, "probe": ProbeParams,
                      "diffusion": slice_of(DiffusionConfig, "precision"),
                      "injection": slice_of(InjectionParams, "n_inv_step")})


def _sample(data: ImageTensors, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(len(data.targets), size=min(n, len(data.targets)), replace=False))


def _bias(manifest: pd.DataFrame, data: ImageTensors, rows: np.ndarray) -> np.ndarray | None:
    """Manifest bias labels of `rows`, for the evaluation-only probe; None where any is missing."""
    if "bias" not in manifest or manifest["bias"].isna().any():
        return None
    bias_of = dict(zip(manifest["id"].astype(int), manifest["bias"]))
    return np.array([int(bias_of[int(i)]) for i in data.ids[rows]])


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    p = PARAMS.load(params)
    cfg, inj, trainer_cfg, seed = p.probe, p.injection, p.trainer, p.seed
    device = inference_device(trainer_cfg.accelerator)
    prepared = root / PREPARED
    manifest = read_manifest(prepared)
    n_classes = num_classes_of(manifest)
    train, valid = load_split(prepared, "train", manifest), load_split(prepared, "valid", manifest)
    rng = np.random.default_rng(seed)
    fit_rows, eval_rows = _sample(train, cfg.n_images, rng), _sample(valid, cfg.n_images, rng)
    net, _, _ = load_classifier(model_dir(root, "biased"), num_classes=n_classes, image_shape=train.shape,
                                missing_hint=missing_model_hint("biased"))
    fit_soft = torch.softmax(predict_logits(net, train, 1024, trainer_cfg), 1)[fit_rows]
    eval_soft = torch.softmax(predict_logits(net, valid, 1024, trainer_cfg), 1)[eval_rows]
    labels = probe_labels(train.targets.numpy()[fit_rows], fit_soft, valid.targets.numpy()[eval_rows], eval_soft,
                          n_classes, _bias(manifest, train, fit_rows), _bias(manifest, valid, eval_rows))

    unet, scheduler = load_diffusion(root / DIFFUSION, image_shape=train.shape)
    unet = unet.to(device).eval()
    sites = site_names(unet)
    start = time.perf_counter()
    with torch.no_grad(), autocast(resolve_precision(p.diffusion.precision, device), device):
        timesteps, fit = path_features(unet, scheduler, to_model_range(train.images[fit_rows]).to(device),
                                       inj.n_inv_step, sites, cfg.batch_size)
        _, evaluate = path_features(unet, scheduler, to_model_range(valid.images[eval_rows]).to(device),
                                    inj.n_inv_step, sites, cfg.batch_size)
    curves = probe_accuracy(fit, evaluate, labels)
    seconds = time.perf_counter() - start
    save_curves(timesteps, curves, root / PLOTS / "probe")
    report = {
        "n_fit": len(fit_rows), "n_eval": len(eval_rows), "timesteps": timesteps.tolist(),
        "labelings": [name for name in (*LABELINGS, BIAS_EVAL) if name in labels],
        # mean over timesteps: site -> view -> labelling (dvc metrics / MLflow keys like probe/mean.up0.stats.self_labeled)
        "mean": {s: {v: {k: round(float(np.mean(a)), 4) for k, a in by.items()} for v, by in views.items()}
                 for s, views in curves.items()},
        "curves": {s: {v: {k: np.round(a, 4).tolist() for k, a in by.items()} for v, by in views.items()}
                   for s, views in curves.items()},
        "seconds": round(seconds, 2),
    }
    write_json(root / PROBE, report)
    for s, views in report["mean"].items():
        print(f"probe: {s:>4}  " + "  ".join(f"{v}: class {by['self_labeled']:.2f} proxy {by['cls_labeled_oh']:.2f}"
                                               + (f" bias {by[BIAS_EVAL]:.2f}" if BIAS_EVAL in by else "") for v, by in views.items()))
    return report
