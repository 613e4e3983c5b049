"""Making a synthetic pool: (content, style) pairs, batched injected generation, resumable on disk.

Pairs: the k-th sample takes content k mod |contents| (in a seeded order) and a style image drawn
(seeded) so that the result conflicts, judged by the bias proxy (the biased classifier's prediction,
no bias label): with the label from the content, a style of another class whose proxy is not the
content's class (the style lends its bias); with the label from the style, a style whose class is not
the content's proxy (the content lends its bias: a content the biased model already calls the style's
class would make an aligned image).

Balanced pairing (`injection.pairing: balanced`) draws the image that lends the bias so that, per
synthetic label, its proxy values are spread as evenly as the inverted images allow: each pair takes the
proxy value its label has used least so far, then the least-used image with that value. Random pairing
inherits the mined contents' own imbalance, since a few mined images carry most of the pool's bias.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from diffinject.diffusion.injection_params import PAIRINGS, InjectionParams
from diffinject.diffusion.inversion_store import InvertedSet
from diffinject.devices import barrier
from diffinject.diffusion.model import to_uint8
from diffinject.diffusion.pool_filter import Verdict, kept_per_class
from diffinject.diffusion.sampler import InjectionSampler
from diffinject.diffusion.sites import Features
from diffinject.errors import DiffinjectError

BATCH_DONE = "batch_{:05d}.json"


@dataclass
class Pairs:
    content: np.ndarray  # (n,) row in the content set
    style: np.ndarray  # (n,) row in the style set


def make_pairs(content_targets: np.ndarray, style_targets: np.ndarray, n: int, seed: int,
               label_from: str = "content", content_proxy: np.ndarray | None = None,
               style_proxy: np.ndarray | None = None, pairing: str = "random") -> Pairs:
    """n (content, style) pairs whose result conflicts (module docstring); without proxies, a style of
    another class than the content's. `pairing` balanced: module docstring."""
    if pairing not in PAIRINGS:
        raise DiffinjectError(f"params 'injection.pairing': got {pairing!r}, expected one of {', '.join(PAIRINGS)}")
    rng = np.random.default_rng(seed)
    if pairing == "balanced" and label_from == "style":
        return _balanced_style_label(content_targets, style_targets, n, rng,
                                     content_targets if content_proxy is None else content_proxy)
    order = rng.permutation(len(content_targets))
    content = order[np.arange(n) % len(order)]
    style = np.empty(n, dtype=np.int64)
    balance = _Balance(style_targets if style_proxy is None else style_proxy, len(style_targets)) if pairing == "balanced" else None
    for k, c in enumerate(content):
        if label_from == "style" and content_proxy is not None:
            ok = style_targets != content_proxy[c]
            why = f"no style image of a class other than {content_proxy[c]}, the biased model's class for content {c}"
        else:
            ok = style_targets != content_targets[c]
            if style_proxy is not None:
                ok &= style_proxy != content_targets[c]
            why = f"no style image of a class other than {content_targets[c]} (styles come from a single class)"
        candidates = np.flatnonzero(ok)
        if len(candidates) == 0:
            raise DiffinjectError(why)
        style[k] = rng.choice(candidates) if balance is None else balance.draw(int(content_targets[c]), candidates, rng)
    return Pairs(content=content, style=style)


class _Balance:
    """Per synthetic label, how often each bias value (the lending images' proxies) and each lending
    image have been drawn: `draw` takes the label's least-used value among the candidates, then that
    value's least-used image, ties broken by the seeded generator."""

    def __init__(self, bias: np.ndarray, n_images: int):
        self.bias = np.asarray(bias, dtype=np.int64)
        self.value_uses: dict[int, np.ndarray] = {}
        self.image_uses = np.zeros(n_images, dtype=np.int64)

    def draw(self, label: int, candidates: np.ndarray, rng: np.random.Generator) -> int:
        uses = self.value_uses.setdefault(label, np.zeros(int(self.bias.max()) + 1, dtype=np.int64))
        values = np.unique(self.bias[candidates])
        fewest = values[uses[values] == uses[values].min()]
        value = fewest[rng.integers(len(fewest))]
        images = candidates[self.bias[candidates] == value]
        least = images[self.image_uses[images] == self.image_uses[images].min()]
        image = int(least[rng.integers(len(least))])
        uses[value] += 1
        self.image_uses[image] += 1
        return image


def _balanced_style_label(content_targets: np.ndarray, style_targets: np.ndarray, n: int,
                          rng: np.random.Generator, content_bias: np.ndarray) -> Pairs:
    """Label from the style, bias from the content: the labels go round the style classes in a seeded
    order (each as often), and each pair's content is the balanced draw among the contents whose proxy
    is not that label."""
    classes = np.unique(style_targets)
    labels = np.resize(rng.permutation(classes), n)
    balance = _Balance(content_bias, len(content_targets))
    content, style = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for k, y in enumerate(labels):
        candidates = np.flatnonzero(content_bias != y)
        if len(candidates) == 0:
            raise DiffinjectError(f"no content image whose bias proxy is another class than {y}")
        content[k] = balance.draw(int(y), candidates, rng)
        style[k] = rng.choice(np.flatnonzero(style_targets == y))
    return Pairs(content=content, style=style)


def pairs_for(contents: InvertedSet, styles: InvertedSet, n: int, seed: int, label_from: str,
              pairing: str = "random") -> Pairs:
    """make_pairs on two inverted sets, with their bias proxies where they carry them."""
    return make_pairs(contents.targets.numpy(), styles.targets.numpy(), n, seed, label_from,
                      None if contents.proxy is None else contents.proxy.numpy(),
                      None if styles.proxy is None else styles.proxy.numpy(), pairing)


def batch_generator(seed: int, batch: int, device: torch.device) -> torch.Generator:
    """A generator per batch, so a resumed run draws exactly the noise an uninterrupted run draws."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + batch)


def pair_labels(pairs: Pairs, contents: InvertedSet, styles: InvertedSet, label_from: str) -> np.ndarray:
    """The synthetic label of every pair: the content's class or the style's."""
    return (contents.targets[pairs.content] if label_from == "content" else styles.targets[pairs.style]).numpy()


def class_quota(labels: np.ndarray, n: int) -> dict[int, int]:
    """How many images of each label the first n pairs make: the filtered pool keeps that class mix."""
    classes, counts = np.unique(labels[:n], return_counts=True)
    return {int(c): int(k) for c, k in zip(classes, counts)}


def generate_pool(sampler: InjectionSampler, contents: InvertedSet, content_features: Features, styles: InvertedSet,
                  pairs: Pairs, label_from: Literal["content", "style"], batch_size: int, seed: int, work: Path,
                  rank: int = 0, world_size: int = 1,
                  on_batch: Callable[[int], None] | None = None,
                  judge: Callable[[torch.Tensor, np.ndarray], Verdict] | None = None,
                  quota: dict[int, int] | None = None) -> None:
    """Generate the batches of pairs whose index ≡ rank (mod world_size) into `work`, skipping batches
    already done (their marker file exists); each batch writes its PNGs, then its marker, atomically.
    content_features: site -> tensors (n_steps, |contents|, ...) on `contents.timesteps`.

    With a `judge` (the pool filter) `pairs` are the tries and `quota` the images wanted per label:
    batches go in rounds of world_size; a round starts only while some label has fewer kept images than
    its quota, and skips the pairs of labels already full (every rank reads the same markers after a
    barrier, so all decide alike); only kept images are written."""
    n = len(pairs.content)
    n_batches = (n + batch_size - 1) // batch_size
    if judge is None:
        batches = [b for b in range(n_batches) if b % world_size == rank]
        todo = [b for b in batches if not (work / BATCH_DONE.format(b)).is_file()]
        if len(todo) < len(batches):
            print(f"inject: resuming, {len(batches) - len(todo)} of {len(batches)} batches already done")
        for b in tqdm(todo, desc="inject: batches", unit="batch"):
            _generate_batch(sampler, contents, content_features, styles, pairs, label_from, batch_size, seed, work, b)
            if on_batch is not None:
                on_batch(b)
        return
    progress = tqdm(total=sum(quota.values()), desc="inject: kept", unit="image")
    kept: dict[int, int] = {}
    for first in range(0, n_batches, world_size):
        if first:  # the previous round's markers: every batch before `first` is done after the barrier
            for label, count in kept_per_class(read_markers(work, first, start=first - world_size)).items():
                kept[label] = kept.get(label, 0) + count
        progress.update(sum(min(kept.get(y, 0), q) for y, q in quota.items()) - progress.n)
        full = {y for y, q in quota.items() if kept.get(y, 0) >= q}
        if len(full) == len(quota):
            break
        b = first + rank
        if b < n_batches and not (work / BATCH_DONE.format(b)).is_file():
            _generate_batch(sampler, contents, content_features, styles, pairs, label_from, batch_size, seed, work, b,
                            judge, skip_labels=full)
            if on_batch is not None:
                on_batch(b)
        barrier()
    progress.close()


def _generate_batch(sampler: InjectionSampler, contents: InvertedSet, content_features: Features, styles: InvertedSet,
                    pairs: Pairs, label_from: str, batch_size: int, seed: int, work: Path, b: int,
                    judge: Callable[[torch.Tensor, np.ndarray], Verdict] | None = None,
                    skip_labels: set[int] = frozenset()) -> None:
    rows = np.arange(b * batch_size, min(len(pairs.content), (b + 1) * batch_size))
    if skip_labels:  # the filter: labels whose quota is full are not tried again
        rows = rows[~np.isin(pair_labels(Pairs(pairs.content[rows], pairs.style[rows]), contents, styles, label_from),
                             sorted(skip_labels))]
    records = _generate_rows(sampler, contents, content_features, styles, pairs, label_from, seed, work, b, rows, judge) \
        if len(rows) else []
    marker = work / BATCH_DONE.format(b)
    tmp = marker.with_name(f".tmp-{marker.name}")
    tmp.write_text(json.dumps(records))
    tmp.replace(marker)


def _generate_rows(sampler: InjectionSampler, contents: InvertedSet, content_features: Features, styles: InvertedSet,
                   pairs: Pairs, label_from: str, seed: int, work: Path, b: int, rows: np.ndarray,
                   judge: Callable[[torch.Tensor, np.ndarray], Verdict] | None) -> list[dict]:
    """Generate pairs `rows` (batch b's noise), judge them, write the kept images; their records."""
    device = next(sampler.unet.parameters()).device
    c, s = pairs.content[rows], pairs.style[rows]
    x_T = styles.x_T[s].to(device)
    features = {site: tuple(f[:, c].to(device) for f in tensors) for site, tensors in content_features.items()}
    targets = pair_labels(Pairs(c, s), contents, styles, label_from)
    images = to_uint8(sampler.generate(x_T, features, contents.timesteps, batch_generator(seed, b, device),
                                       labels=targets)).cpu()
    verdict = judge(images, targets) if judge is not None else None
    records = []
    for k, row in enumerate(rows):
        rel = f"images/{int(targets[k])}/{int(row)}_{int(targets[k])}.png"
        record = dict(id=int(row), path=rel, target=int(targets[k]),
                      content_id=int(contents.ids[c[k]]), style_id=int(styles.ids[s[k]]),
                      content_target=int(contents.targets[c[k]]), style_target=int(styles.targets[s[k]]),
                      content_proxy=_proxy(contents, c[k]), style_proxy=_proxy(styles, s[k]))
        if verdict is not None:
            record.update(kept=bool(verdict.keep[k]), confidence=round(float(verdict.confidence[k]), 4),
                          reads_label=bool(verdict.reads_label[k]), biased_pred=int(verdict.biased_pred[k]))
        if verdict is None or verdict.keep[k]:  # a rejected try leaves only its record
            dest = work / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".tmp-{dest.name}")
            Image.fromarray(images[k].permute(1, 2, 0).numpy()).save(tmp, format="PNG")
            tmp.replace(dest)
        records.append(record)
    return records


def read_markers(work: Path, n_batches: int, start: int = 0) -> list[dict]:
    """The records of batches start .. n_batches - 1 (each must be done)."""
    records = []
    for b in range(start, n_batches):
        marker = work / BATCH_DONE.format(b)
        if not marker.is_file():
            raise DiffinjectError(f"{marker}: batch {b} was not generated")
        records += json.loads(marker.read_text())
    return records


def _proxy(data: InvertedSet, row: int) -> int:
    return int(data.proxy[row]) if data.proxy is not None else -1


def collect_manifest(work: Path, n_batches: int, config: InjectionParams, label_from: str,
                     quota: dict[int, int] | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """(the synthetic manifest from the batch markers: id, path, target, content_id, style_id, the
    params that made it; every try's record). With the filter (`quota`), the batches run until the
    first one not generated, and the manifest holds each label's first `quota` kept tries."""
    if quota is None:
        records = read_markers(work, n_batches)
        table = pd.DataFrame.from_records(records)
    else:
        done = next((b for b in range(n_batches) if not (work / BATCH_DONE.format(b)).is_file()), n_batches)
        records = read_markers(work, done)
        table = pd.DataFrame.from_records([r for r in records if r["kept"]])
        if table.empty:
            return table, records
        table = table.sort_values("id")
        table = table[table.groupby("target").cumcount() < table["target"].map(quota).fillna(0)]
        table = table.drop(columns=["kept", "reads_label"])
    table["label_from"] = label_from
    for key, value in config.generation_record().items():
        table[key] = value
    return table.sort_values("id").reset_index(drop=True), records
