"""h-space probes: which attribute does each UNet site carry, at each timestep? (DebiasDiffusion's h-space
classifiers, Kwon et al.'s h; here as closed-form linear probes.)

Images are DDIM-inverted on the injection grid; at every grid timestep the features of every site
(sites.py) are read on the inversion path in two views:
    stats  per-channel mean and standard deviation of each of the site's tensors: what the
           channel_stats operator moves
    map    the tensors average-pooled to at most MAP_SIDE × MAP_SIDE and flattened: what slerp moves
One linear head per (site, view, timestep) is fitted on the probe's train images and scored on valid
images, for each labelling (DebiasDiffusion's three modes):
    self_labeled    the manifest's targets (attribute: the class)
    cls_labeled     the biased classifier's softmax, soft targets (attribute: the bias proxy)
    cls_labeled_oh  its argmax, one-hot (attribute: the bias proxy)
and, only to report, the true bias label where the manifest has one (never read by a decision).

A head is ridge regression onto the (soft) one-hot targets of standardised features, solved in its dual
form (N × N), so a probe is exact and deterministic and costs a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffinject.diffusion.ddim import ddim_invert
from diffinject.diffusion.sampler import capture_features

VIEWS = ("stats", "map")
MAP_SIDE = 7  # h of the default UNet is 7 × 7: its map view is h itself
RIDGE = 1.0  # ridge penalty per sample on standardised features
LABELINGS = ("self_labeled", "cls_labeled", "cls_labeled_oh")
BIAS_EVAL = "true_bias"  # evaluation-only labelling from the manifest's bias column
# The view each operator moves, so a decision reads the probe that sees what the injection changes.
VIEW_OF_OPERATOR = {"slerp": "map", "channel_stats": "stats", "channel_mean": "stats"}


def site_view(tensors: Sequence[torch.Tensor], view: str) -> torch.Tensor:
    """(…, C, H, W) tensors of one site -> (…, D) features of `view`."""
    parts = []
    for f in tensors:
        lead = f.shape[:-3]
        flat = f.reshape(-1, *f.shape[-3:])
        if view == "stats":
            parts.append(torch.cat([flat.mean((2, 3)), flat.std((2, 3))], 1).reshape(*lead, -1))
        elif view == "map":
            side = min(MAP_SIDE, flat.shape[-1])
            parts.append(F.adaptive_avg_pool2d(flat, side).flatten(1).reshape(*lead, -1))
        else:
            raise ValueError(f"probe view {view!r}: expected one of {', '.join(VIEWS)}")
    return torch.cat(parts, -1)


ViewFeatures = dict[str, dict[str, torch.Tensor]]  # site -> view -> (n_steps, N, D)


@torch.no_grad()
def path_features(unet: nn.Module, scheduler, x0: torch.Tensor, n_steps: int, sites: Sequence[str],
                  batch_size: int) -> tuple[np.ndarray, ViewFeatures]:
    """(grid timesteps, site -> view -> (n_steps, N, D)) of images x0 (model range) on their inversion
    path; each step's maps are reduced to their views at once (full maps of 28 × 28 sites would not fit)."""
    xss, timesteps = [], None
    for start in range(0, len(x0), batch_size):
        inv = ddim_invert(unet, scheduler, x0[start:start + batch_size], n_steps, keep_path=True)
        xss.append(inv.xs.cpu())
        timesteps = inv.timesteps
    xs = torch.cat(xss, 1)
    per_step = []
    for i in range(len(timesteps)):
        features = capture_features(unet, xs[i:i + 1], timesteps[i:i + 1], sites, batch_size)
        per_step.append({s: {v: site_view([f[0] for f in features[s]], v) for v in VIEWS} for s in sites})
    return timesteps, {s: {v: torch.stack([p[s][v] for p in per_step]) for v in VIEWS} for s in sites}


def fit_ridge_probe(x_fit: torch.Tensor, y_fit: torch.Tensor, x_eval: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """Scores (T, N_eval, K) of per-timestep linear heads fitted on x_fit (T, N, D) -> y_fit (N, K).

    Features are standardised with the fit set's statistics; W = Xᵀ(XXᵀ + λN·I)⁻¹(Y − Ȳ) per timestep."""
    x_fit, x_eval, y = x_fit.double(), x_eval.double(), y_fit.double()
    mu, sd = x_fit.mean(1, keepdim=True), x_fit.std(1, keepdim=True).clamp_min(1e-6)
    a, b = (x_fit - mu) / sd, (x_eval - mu) / sd  # (T, N, D), (T, M, D)
    y_mean = y.mean(0, keepdim=True)
    n = a.shape[1]
    gram = a @ a.transpose(1, 2) + ridge * n * torch.eye(n, dtype=a.dtype)  # (T, N, N)
    # One solve per timestep, not one batched solve: torch runs a batch of LU factorisations in a parallel
    # loop whose iterations each call MKL's threaded dgetrf, and once the process has changed its thread
    # count (torch.set_num_threads 1 -> 2) those nested calls spin forever (MKL reports bad DLASWP args).
    alpha = torch.stack([torch.linalg.solve(g, y - y_mean) for g in gram])  # (T, N, K)
    return (b @ a.transpose(1, 2)) @ alpha + y_mean  # (T, M, K)


@dataclass
class ProbeLabels:
    """Targets of the probe's fit images and the labels it is scored against on the eval images."""

    fit: torch.Tensor  # (N, K) soft or one-hot targets
    eval: np.ndarray  # (M,) class indices


def probe_labels(fit_targets: np.ndarray, fit_proxy_soft: torch.Tensor, eval_targets: np.ndarray,
                 eval_proxy_soft: torch.Tensor, n_classes: int, fit_bias: np.ndarray | None = None,
                 eval_bias: np.ndarray | None = None) -> dict[str, ProbeLabels]:
    """The labelling modes (module docstring); `true_bias` only where bias labels are given."""
    def one_hot(labels: np.ndarray) -> torch.Tensor:
        return F.one_hot(torch.as_tensor(labels, dtype=torch.long), n_classes).double()

    eval_proxy = eval_proxy_soft.argmax(1).numpy()
    labels = {
        "self_labeled": ProbeLabels(one_hot(fit_targets), eval_targets),
        "cls_labeled": ProbeLabels(fit_proxy_soft.double(), eval_proxy),
        "cls_labeled_oh": ProbeLabels(one_hot(fit_proxy_soft.argmax(1).numpy()), eval_proxy),
    }
    if fit_bias is not None and eval_bias is not None:
        labels[BIAS_EVAL] = ProbeLabels(one_hot(fit_bias), eval_bias)
    return labels


def probe_accuracy(fit: ViewFeatures, evaluate: ViewFeatures, labels: dict[str, ProbeLabels]) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """site -> view -> labelling -> valid accuracy per timestep (T,)."""
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for site in fit:
        out[site] = {}
        for view in VIEWS:
            x_fit, x_eval = fit[site][view], evaluate[site][view]
            out[site][view] = {
                name: (fit_ridge_probe(x_fit, lab.fit, x_eval).argmax(-1).numpy() == lab.eval[None]).mean(1)
                for name, lab in labels.items()
            }
    return out


def decide_label_from(probe: dict, sites: Sequence[str], operator: str, t_edit: int, t_max: int | None = None) -> dict:
    """`injection.label_from: auto` from metrics/probe.json, with no bias label: if the injected sites (in
    the operator's view, over the timesteps it injects at) carry the bias proxy better than the target,
    the content lends its bias and the label comes from the style; otherwise from the content."""
    view = VIEW_OF_OPERATOR[operator]
    timesteps = np.asarray(probe["timesteps"])
    keep = (timesteps >= t_edit) & (timesteps <= (timesteps.max() if t_max is None else t_max))
    if not keep.any():
        raise ValueError(f"no probed timestep lies in the injection window t_edit {t_edit} .. t_max {t_max}")
    curves = probe["curves"]
    target = float(np.mean([np.asarray(curves[s][view]["self_labeled"])[keep] for s in sites]))
    proxy = float(np.mean([np.asarray(curves[s][view]["cls_labeled_oh"])[keep] for s in sites]))
    return {"label_from": "style" if proxy > target else "content", "view": view, "sites": list(sites),
            "probe_target_acc": round(target, 4), "probe_bias_proxy_acc": round(proxy, 4)}
