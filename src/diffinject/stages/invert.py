"""Stage `invert`: DDIM-invert the content images (the mined conflicts, with x_t at every step, from
which `inject` recomputes the features of any site) and the style images (drawn, seeded, from the
training samples the biased model finds easiest; no bias label is read) -> data/inversions/, with the
biased model's prediction for each image (the bias proxy that pairs them; with `injection.pairing_proxy:
channel_stats`, a colour reader's fitted on those predictions). It depends only on the DDPM, the images
and `injection.n_inv_step` / style-pool / proxy keys, so changing the operator, site, schedule,
h_gamma, t_edit, t_boost, dt_lambda or bias_conflict_ratio never re-inverts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diffinject.config import StageParams, slice_of
from diffinject.data.manifest import read_manifest
from diffinject.data.tensors import load_split, num_classes_of
from diffinject.devices import inference_device
from diffinject.diffusion.bias_reader import StatsReader
from diffinject.diffusion.injection_params import InjectionParams
from diffinject.diffusion.inversion import choose_styles, invert_rows
from diffinject.diffusion.inversion_store import CONTENT, STYLE, save_inverted
from diffinject.diffusion.model import DiffusionConfig, load_diffusion
from diffinject.diffusion.precision import autocast, resolve_precision
from diffinject.fsutil import atomic_dir, write_json
from diffinject.models.checkpoint import load_classifier
from diffinject.models.trainer import TrainerConfig
from diffinject.models.training import predict_logits
from diffinject.stages.common import mined_train_rows
from diffinject.stages.paths import CONFLICTS, DIFFUSION, INVERSIONS, METRICS, PREPARED, missing_model_hint, model_dir

PARAMS = StageParams({
    "trainer": TrainerConfig,
    "diffusion": slice_of(DiffusionConfig, "precision"),
    "injection": slice_of(InjectionParams, "n_inv_step", "batch_size", "styles_per_class", "style_easiest_fraction",
                          "pairing_proxy"),
})


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    p = PARAMS.load(params)
    cfg, trainer_cfg, seed = p.injection, p.trainer, p.seed
    device = inference_device(trainer_cfg.accelerator)
    prepared = root / PREPARED
    manifest = read_manifest(prepared)
    train = load_split(prepared, "train", manifest)
    content_rows = mined_train_rows(train, root / CONFLICTS)

    net, _, _ = load_classifier(model_dir(root, "biased"), num_classes=num_classes_of(manifest),
                                image_shape=train.shape, missing_hint=missing_model_hint("biased"))
    logits = predict_logits(net, train, 1024, trainer_cfg)
    losses = F.cross_entropy(logits, train.targets, reduction="none").numpy()
    proxy = logits.argmax(1).numpy()  # the biased model's class: a bias proxy, no bias label read
    if cfg.pairing_proxy == "channel_stats":  # a reader of colour fitted on those predictions (bias_reader.py)
        proxy = StatsReader(train.images, torch.as_tensor(proxy), num_classes_of(manifest)).predict(train.images).numpy()
    style_rows = choose_styles(losses, train.targets.numpy(), cfg.styles_per_class, cfg.style_easiest_fraction, seed)

    unet, scheduler = load_diffusion(root / DIFFUSION, image_shape=train.shape)
    unet = unet.to(device).eval()
    precision = resolve_precision(p.diffusion.precision, device)
    start = time.perf_counter()
    with torch.no_grad(), autocast(precision, device):
        contents = invert_rows(unet, scheduler, train, content_rows, cfg.n_inv_step, True, cfg.batch_size, device, proxy)
        styles = invert_rows(unet, scheduler, train, style_rows, cfg.n_inv_step, False, cfg.batch_size, device, proxy)
    seconds = time.perf_counter() - start
    with atomic_dir(root / INVERSIONS) as tmp:
        save_inverted(contents, tmp / CONTENT)
        save_inverted(styles, tmp / STYLE)
        (tmp / "index.json").write_text(json.dumps({
            "n_inv_step": cfg.n_inv_step, "n_content": len(content_rows), "n_style": len(style_rows),
            "content_ids": contents.ids.tolist(), "style_ids": styles.ids.tolist(), "seed": seed, "precision": precision,
        }, indent=2) + "\n")
    n = len(content_rows) + len(style_rows)
    metrics = {"n_content": len(content_rows), "n_style": len(style_rows), "n_inv_step": cfg.n_inv_step,
               "seconds": round(seconds, 2), "seconds_per_image": round(seconds / n, 4), "precision": precision}
    write_json(root / METRICS / "invert.json", metrics)
    print(f"invert: {len(content_rows)} content (with x_t at every step) + {len(style_rows)} style images in {seconds:.1f} s -> {root / INVERSIONS}")
    return metrics
