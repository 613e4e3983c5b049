"""Stage `invert`: DDIM-invert the content images (the mined conflicts, with x_t at every step, from
which `inject` recomputes the features of any site) and the style images (drawn, seeded, from the
training samples the biased model finds easiest; no bias label is read) -> data/inversions/, with the
biased model's prediction for each image (the bias proxy that pairs them). It depends only on the DDPM,
the images and `injection.n_inv_step` / style-pool keys, so changing the operator, site, schedule,
h_gamma, t_edit, t_boost, dt_lambda or bias_conflict_ratio never re-inverts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diffinject.config import load_params, section
from diffinject.data.manifest import read_manifest
from diffinject.devices import inference_device
from diffinject.data.tensors import ImageTensors, load_split, num_classes_of
from diffinject.diffusion.injection import InjectionParams
from diffinject.diffusion.inversion_store import CONTENT, STYLE, InvertedSet, save_inverted
from diffinject.diffusion.model import diffusion_precision, load_diffusion, to_model_range
from diffinject.diffusion.precision import autocast
from diffinject.diffusion.sampler import ddim_invert
from diffinject.fsutil import atomic_dir, write_json
from diffinject.models.checkpoint import load_classifier
from diffinject.models.training import predict_logits
from diffinject.stages.common import (CONFLICTS, METRICS, MODELS, PREPARED, common_inputs, mined_train_rows,
                                      missing_model_hint, model_dir)

OUT = Path("data/inversions")
DIFFUSION = MODELS / "diffusion"


def choose_styles(losses: np.ndarray, targets: np.ndarray, per_class: int, easiest_fraction: float,
                  seed: int) -> np.ndarray:
    """Rows of `per_class` style images per class, drawn from that class's lowest-loss fraction."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in np.unique(targets):
        of_class = np.flatnonzero(targets == label)
        easiest = of_class[np.argsort(losses[of_class], kind="stable")[: max(1, int(len(of_class) * easiest_fraction))]]
        rows.append(rng.choice(easiest, size=min(per_class, len(easiest)), replace=False))
    return np.sort(np.concatenate(rows))


def invert_set(unet, scheduler, data: ImageTensors, rows: np.ndarray, n_steps: int, keep_path: bool,
               batch_size: int, device: torch.device, proxy: np.ndarray | None = None) -> InvertedSet:
    """DDIM inversions of data's `rows`; keep_path keeps x_t at every grid timestep (contents)."""
    x_Ts, xss = [], []
    for start in range(0, len(rows), batch_size):
        chunk = torch.as_tensor(rows[start:start + batch_size])
        inv = ddim_invert(unet, scheduler, to_model_range(data.images[chunk]).to(device), n_steps, keep_h=False,
                          keep_path=keep_path)
        x_Ts.append(inv.x_T.cpu())
        if keep_path:
            xss.append(inv.xs.cpu())
    return InvertedSet(
        x_T=torch.cat(x_Ts), ids=data.ids[rows], targets=data.targets[rows],
        xs=torch.cat(xss, dim=1) if keep_path else None, timesteps=inv.timesteps if keep_path else None,
        proxy=None if proxy is None else torch.as_tensor(proxy[rows], dtype=torch.int64),
    )


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    cfg = section(params, "injection", InjectionParams)
    cfg.check()
    trainer_cfg, seed = common_inputs(params)
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
    style_rows = choose_styles(losses, train.targets.numpy(), cfg.styles_per_class, cfg.style_easiest_fraction, seed)

    unet, scheduler = load_diffusion(root / DIFFUSION)
    unet = unet.to(device).eval()
    precision = diffusion_precision(params, device)
    start = time.perf_counter()
    with torch.no_grad(), autocast(precision, device):
        contents = invert_set(unet, scheduler, train, content_rows, cfg.n_inv_step, True, cfg.batch_size, device, proxy)
        styles = invert_set(unet, scheduler, train, style_rows, cfg.n_inv_step, False, cfg.batch_size, device, proxy)
    seconds = time.perf_counter() - start
    with atomic_dir(root / OUT) as tmp:
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
    print(f"invert: {len(content_rows)} content (with x_t at every step) + {len(style_rows)} style images in {seconds:.1f} s -> {root / OUT}")
    return metrics


def main(params_path: str = "params.yaml") -> None:
    run(load_params(params_path))
