"""Build a prepared dataset (DisEnt layout + manifest) from a data source.

Grey sources (mnist5k, idx) are split per class, then given bias labels by the LfF protocol with the train
split skewed to `conflict_pct` % bias-conflicting samples and valid/test unbiased; `bias` says how a label
is drawn into the image (stroke colour, background colour or a corruption: `data/bias.py`). Folder
sources are indexed and copied as they are (re-encoded to PNG only when they must be resized or are not
PNG); they carry their own bias.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from diffinject.data.bias import N_BIAS_VALUES, check_mechanism, render
from diffinject.data.colour import assign_bias_labels
from diffinject.data.manifest import SPLITS, image_relpath, make_manifest, write_manifest
from diffinject.data.sources import FolderImage, GreyImages, load_folder, load_idx_folder, load_mnist5k
from diffinject.errors import DiffinjectError

# PNG encoding releases the GIL inside zlib, so a few threads keep the disk and both cores busy.
WRITE_THREADS = 4


@dataclass
class SplitFractions:
    train: float = 0.8
    valid: float = 0.1
    test: float = 0.1


@dataclass
class DataConfig:
    source: Literal["mnist5k", "idx", "folder"] = "mnist5k"
    bias: Literal["colour", "background", "corruption"] = "colour"  # grey sources: how the bias label is drawn
    path: str | None = None  # idx / folder sources
    layout: Literal["disent", "imagefolder"] = "disent"  # folder source only
    conflict_pct: float = 1.0  # % bias-conflicting train samples (LfF/DisEnt use 0.5, 1, 2, 5)
    color_std: float = 0.005  # per-image colour noise, LfF severity 4
    split: SplitFractions = field(default_factory=SplitFractions)
    image_size: int | None = 28  # side length images are resized to; null keeps folder images as they are
    n_train: int | None = None  # grey sources: keep this many train images (valid in proportion), stratified by class; null: all

    def check(self) -> None:
        check_mechanism(self.bias)
        if not 0 < self.conflict_pct < 100:
            raise DiffinjectError(f"params 'data.conflict_pct': got {self.conflict_pct}, expected a percentage in (0, 100)")
        if self.color_std < 0:
            raise DiffinjectError(f"params 'data.color_std': got {self.color_std}, expected >= 0")
        fractions = (self.split.train, self.split.valid, self.split.test)
        if min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
            raise DiffinjectError(f"params 'data.split': got {fractions}, expected three positive fractions summing to 1")
        if self.n_train is not None and self.n_train < 10:
            raise DiffinjectError(f"params 'data.n_train': got {self.n_train}, expected >= 10 or null")
        if self.image_size is not None and self.image_size < 8:
            raise DiffinjectError(f"params 'data.image_size': got {self.image_size}, expected >= 8 or null")


@dataclass
class PrepareSummary:
    n_images: dict[str, int]
    n_classes: int
    class_names: dict[int, str] | None
    source: str
    bias: str  # the mechanism of a grey source (data.bias), "folder" for a folder source's own bias


def stratified_split(targets: np.ndarray, fractions: SplitFractions, rng: np.random.Generator) -> np.ndarray:
    """Split label per sample ('train'/'valid'/'test'), the same fractions within every class."""
    out = np.empty(len(targets), dtype=object)
    for label in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == label))
        n_valid = int(round(len(idx) * fractions.valid))
        n_test = int(round(len(idx) * fractions.test))
        out[idx[:n_valid]] = "valid"
        out[idx[n_valid : n_valid + n_test]] = "test"
        out[idx[n_valid + n_test :]] = "train"
    return out


def _assign_splits(grey: GreyImages, cfg: DataConfig, rng: np.random.Generator) -> np.ndarray:
    if grey.official_test is None:
        return stratified_split(grey.targets, cfg.split, rng)
    # Keep the source's own test set; split the rest into train/valid in the configured proportion.
    splits = np.full(len(grey.targets), "test", dtype=object)
    rest = np.flatnonzero(~grey.official_test)
    share = SplitFractions(train=cfg.split.train, valid=cfg.split.valid / (cfg.split.train + cfg.split.valid), test=0.0)
    splits[rest] = stratified_split(grey.targets[rest], share, rng)
    return splits


def subsample_train(splits: np.ndarray, targets: np.ndarray, cfg: DataConfig, rng: np.random.Generator) -> np.ndarray:
    """`data.n_train`: keep exactly n_train train images, and valid images in the same proportion, each
    class in its share (seeded); the others get split "unused" and are not written. Test is kept whole."""
    n_available = int((splits == "train").sum())
    if cfg.n_train > n_available:
        raise DiffinjectError(f"params 'data.n_train': got {cfg.n_train}, but the source has {n_available} train images "
                              f"(expected <= {n_available} or null)")
    out = splits.copy()
    fraction = cfg.n_train / n_available
    for split in ("train", "valid"):
        rows = np.flatnonzero(splits == split)
        total = cfg.n_train if split == "train" else int(round(fraction * len(rows)))
        classes, counts = np.unique(targets[rows], return_counts=True)
        share = counts * total / len(rows)
        quota = np.floor(share).astype(int)
        quota[np.argsort(-(share - quota), kind="stable")[: total - quota.sum()]] += 1  # largest remainders
        out[rows] = "unused"
        for label, k in zip(classes, quota):
            members = rows[targets[rows] == label]
            out[rng.permutation(members)[:k]] = split
    return out


def resize_grey(images: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or images.shape[1:] == (size, size):
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])


def save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def prepare_grey(grey: GreyImages, cfg: DataConfig, seed: int, out: Path) -> list[dict]:
    """Split, draw the bias (`cfg.bias`) into and write a grey source; returns manifest records."""
    n_classes = int(grey.targets.max()) + 1
    if n_classes > N_BIAS_VALUES:
        raise DiffinjectError(f"data source has {n_classes} classes; data.bias={cfg.bias!r} has at most {N_BIAS_VALUES} bias values")
    rng = np.random.default_rng(seed)
    splits = _assign_splits(grey, cfg, rng)
    if cfg.n_train is not None:
        splits = subsample_train(splits, grey.targets, cfg, rng)
    images = resize_grey(grey.images, cfg.image_size)
    records: list[dict] = []
    jobs: list[tuple[np.ndarray, Path]] = []
    for split in SPLITS:
        idx = rng.permutation(np.flatnonzero(splits == split))
        aligned_ratio = 1 - cfg.conflict_pct / 100 if split == "train" else 1 / n_classes
        bias = assign_bias_labels(grey.targets[idx], aligned_ratio, n_classes)
        rgb = render(images[idx], bias, cfg.bias, cfg.color_std, rng)
        for k, i in enumerate(idx):
            target, b = int(grey.targets[i]), int(bias[k])
            rel = image_relpath(split, target, b, b == target, int(grey.ids[i]))
            records.append(dict(id=int(grey.ids[i]), path=rel, split=split, target=target, bias=b, aligned=b == target))
            jobs.append((rgb[k], out / rel))
    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        list(tqdm(pool.map(lambda job: save_png(*job), jobs), total=len(jobs), desc="prepare: writing PNGs", unit="img"))
    return records


def _copy_image(item: FolderImage, dest: Path, size: int | None) -> None:
    """Copy one folder image, checking it decodes; re-encode as PNG when it must change."""
    try:
        with Image.open(item.source) as img:
            img.load()  # a truncated file fails here, not later in a training loop
            needs_resize = size is not None and img.size != (size, size)
            if img.format == "PNG" and not needs_resize:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(item.source, dest)
                return
            img = img.convert("RGB")
            if needs_resize:
                img = img.resize((size, size), Image.BILINEAR)
            dest.parent.mkdir(parents=True, exist_ok=True)
            img.save(dest, format="PNG")
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise DiffinjectError(f"{item.source}: not a readable image ({exc})") from exc


def prepare_folder(items: list[FolderImage], cfg: DataConfig, out: Path) -> list[dict]:
    records = []
    jobs = []
    for item in items:
        id_ = int(item.id)
        rel = image_relpath(item.split, item.target, item.bias, item.aligned, id_)
        records.append(dict(id=id_, path=rel, split=item.split, target=item.target, bias=item.bias, aligned=item.aligned))
        jobs.append((item, out / rel))
    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        list(tqdm(pool.map(lambda job: _copy_image(job[0], job[1], cfg.image_size), jobs), total=len(jobs),
                  desc="prepare: copying images", unit="img"))
    return records


def prepare(cfg: DataConfig, seed: int, out: Path) -> PrepareSummary:
    """Write images and `manifest.parquet` under `out` (an empty directory)."""
    cfg.check()
    class_names = None
    if cfg.source == "mnist5k":
        records = prepare_grey(load_mnist5k(), cfg, seed, out)
    elif cfg.source == "idx":
        records = prepare_grey(load_idx_folder(cfg.path), cfg, seed, out)
    elif cfg.source == "folder":
        if cfg.n_train is not None:
            raise DiffinjectError(f"params 'data.n_train': got {cfg.n_train}, but it applies to mnist5k and idx sources "
                                  "(a folder keeps its own splits); expected null")
        items, class_names = load_folder(cfg.path, cfg.layout)
        records = prepare_folder(items, cfg, out)
    else:
        raise DiffinjectError(f"params 'data.source': got {cfg.source!r}, expected one of mnist5k, idx, folder")
    manifest = make_manifest(records)
    write_manifest(manifest, out)
    counts = manifest["split"].value_counts()
    return PrepareSummary(
        n_images={s: int(counts.get(s, 0)) for s in SPLITS},
        n_classes=int(manifest["target"].max()) + 1,
        class_names=class_names,
        source=cfg.source,
        bias="folder" if cfg.source == "folder" else cfg.bias,
    )
