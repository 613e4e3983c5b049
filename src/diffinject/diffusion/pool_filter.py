"""The pool filter (`injection.filter`): a generated image enters the pool only when it is a faithful
conflict by two checks that read no bias label:

    reads its label  the reference model (`injection.pilot_reference`, never the biased one) predicts the
                     synthetic label with probability >= `min_confidence`
    conflicts        the biased model (the bias proxy) does not predict it (`reject_biased`)

The pool keeps the unfiltered pool's class mix: each synthetic label has a quota (its count among the
first pool-size pairs). Generation goes on batch by batch, skipping the pairs of labels already full,
until every quota is met or `max_tries` x the pool size have been tried; each label keeps its first kept
images in generation order, so the pool does not depend on how many ranks made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from diffinject.diffusion.injection_params import PoolFilter
from diffinject.models.classifier import to_unit_float

Probabilities = Callable[[torch.Tensor], np.ndarray]  # uint8 images -> (n, C) class probabilities
Predictions = Callable[[torch.Tensor], np.ndarray]  # uint8 images -> (n,) classes


@dataclass
class Verdict:
    keep: np.ndarray  # (n,) bool
    confidence: np.ndarray  # (n,) the reference model's probability of the synthetic label
    reads_label: np.ndarray  # (n,) bool: the reference predicts the label with confidence >= min_confidence
    biased_pred: np.ndarray  # (n,) the biased model's class


def probabilities(net: torch.nn.Module, device: torch.device, batch_size: int = 1024) -> Probabilities:
    """uint8 images -> the network's softmax class probabilities, in eval mode and without gradients
    (models/classifier.py's `predictor`, with the probabilities; here so that no classifier stage
    re-runs for it)."""
    @torch.no_grad()
    def proba(images: torch.Tensor) -> np.ndarray:
        return torch.cat([net(to_unit_float(images[i:i + batch_size].to(device))).float().softmax(1).cpu()
                          for i in range(0, len(images), batch_size)]).numpy()
    return proba


def make_judge(cfg: PoolFilter, reference: Probabilities, biased: Predictions) -> Callable[[torch.Tensor, np.ndarray], Verdict]:
    """images, synthetic labels -> the filter's verdict on each."""

    def judge(images: torch.Tensor, targets: np.ndarray) -> Verdict:
        proba = reference(images)
        confidence = proba[np.arange(len(targets)), targets]
        reads = (proba.argmax(1) == targets) & (confidence >= cfg.min_confidence)
        biased_pred = biased(images)
        keep = reads & (biased_pred != targets) if cfg.reject_biased else reads
        return Verdict(keep, confidence, reads, biased_pred)

    return judge


def kept_per_class(records: list[dict]) -> dict[int, int]:
    """label -> how many of `records` (tries) the filter kept."""
    out: dict[int, int] = {}
    for record in records:
        if record["kept"]:
            out[record["target"]] = out.get(record["target"], 0) + 1
    return out


def filter_report(records: list[dict], quota: dict[int, int], cfg: PoolFilter) -> dict:
    """What the filter did, from every try's record (kept, reads_label, biased_pred, target); `quota`:
    the images wanted per label."""
    tries = len(records)
    kept = kept_per_class(records)
    in_pool = sum(min(kept.get(y, 0), q) for y, q in quota.items())
    report = {"min_confidence": cfg.min_confidence, "reject_biased": cfg.reject_biased, "max_tries": cfg.max_tries,
              "tried": tries, "kept": in_pool, "kept_fraction": round(sum(kept.values()) / max(1, tries), 4),
              "reads_label_rate": round(sum(r["reads_label"] for r in records) / max(1, tries), 4),
              "conflict_rate": round(sum(r["biased_pred"] != r["target"] for r in records) / max(1, tries), 4),
              "mean_confidence": round(float(np.mean([r["confidence"] for r in records])) if records else 0.0, 4)}
    short = {y: q - kept.get(y, 0) for y, q in quota.items() if kept.get(y, 0) < q}
    if short:
        report["short_by"] = sum(short.values())
        report["short_classes"] = {str(y): k for y, k in sorted(short.items())}
    return report
