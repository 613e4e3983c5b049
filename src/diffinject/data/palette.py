"""Every-bias evaluation sets and an unbiased train set from a grey source (mnist5k, idx), drawn with
the mechanism of `data.bias` (stroke colour, background colour or corruption: `data/bias.py`).

valid / test: each digit in every bias value, for group metrics that mean something. With 500 test
images and 100 (target, bias) groups, the prepared test split holds ~5 images per group, so a
worst-group accuracy reads 0.0 for every model. Here each image appears once per bias value: each group
holds the split's images of its class (~50 for mnist5k), and the set is unbiased by construction (every
bias value equally often within every class). Colours carry the same per-image noise (`data.color_std`)
as `prepare`.

train: each train image of data/prepared once, in a bias value drawn uniformly at random: the prepared
train split without its skew, for judges that must not learn the bias (`split == "train"` rows). It is
no evaluation data: evaluation reads valid and test only (`EVAL_SPLITS`).

Folder sources carry their own bias (or no bias labels at all): there the sets are empty and evaluation
reports the prepared splits only.

Manifest columns are those of data/prepared; an image's id is its source id (in valid/test it repeats
once per bias value, the path is unique).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from diffinject.config import check_at_least
from diffinject.data.bias import render
from diffinject.data.manifest import image_relpath, make_manifest, write_manifest
from diffinject.data.prepare import WRITE_THREADS, DataConfig, resize_grey, save_png
from diffinject.data.sources import GreyImages, load_idx_folder, load_mnist5k

EVAL_SPLITS = ("valid", "test")
TRAIN_SPLIT = "train"  # the unbiased train set: not evaluation data
# Added to the pipeline seed, so the every-bias noise is not the prepared splits' noise replayed.
SEED_OFFSET = 7919


@dataclass
class PaletteConfig:
    """`palette.*`."""

    enabled: bool = True
    max_images: int = 1000  # per eval split, before × the number of bias values (idx sources: 10,000 test digits)

    def check(self) -> None:
        check_at_least(self, "palette", 1, "max_images")


def grey_source(cfg: DataConfig) -> GreyImages | None:
    """The grey source `prepare` drew the bias into, or None for folder sources (their own bias)."""
    if cfg.source == "mnist5k":
        return load_mnist5k()
    if cfg.source == "idx":
        return load_idx_folder(cfg.path)
    return None


def _records(split: str, ids: np.ndarray, targets: np.ndarray, bias: np.ndarray, rgb: np.ndarray,
             out: Path) -> tuple[list[dict], list[tuple[np.ndarray, Path]]]:
    """Manifest records and PNG jobs of rendered images (one row per image of `rgb`)."""
    records, jobs = [], []
    for k in range(len(bias)):
        id_, target, b = int(ids[k]), int(targets[k]), int(bias[k])
        rel = image_relpath(split, target, b, b == target, id_)
        records.append(dict(id=id_, path=rel, split=split, target=target, bias=b, aligned=b == target))
        jobs.append((rgb[k], out / rel))
    return records, jobs


def palette_records(grey: GreyImages, prepared: pd.DataFrame, data_cfg: DataConfig, cfg: PaletteConfig,
                    seed: int, out: Path) -> list[dict]:
    """Write the every-bias valid/test sets and the unbiased train set under `out`; returns manifest records."""
    n_bias = int(grey.targets.max()) + 1  # as prepare: one bias value per class
    position = {int(i): k for k, i in enumerate(grey.ids.tolist())}
    rng = np.random.default_rng(seed + SEED_OFFSET)
    records: list[dict] = []
    jobs: list[tuple[np.ndarray, Path]] = []

    def add(split: str, ids: np.ndarray, bias: np.ndarray) -> None:
        rows = np.array([position[int(i)] for i in ids], dtype=np.int64)
        unique, inverse = np.unique(rows, return_inverse=True)  # resize each digit once, not once per bias value
        images = resize_grey(grey.images[unique], data_cfg.image_size)[inverse]  # (n, H, W)
        rgb = render(images, bias, data_cfg.bias, data_cfg.color_std, rng)
        split_records, split_jobs = _records(split, ids, grey.targets[rows], bias, rgb, out)
        records.extend(split_records)
        jobs.extend(split_jobs)

    # valid/test first, drawing from rng as before the train set existed: their images stay the same.
    for split in EVAL_SPLITS:
        ids = prepared.loc[prepared["split"] == split, "id"].to_numpy(dtype=np.int64)
        ids = np.sort(rng.permutation(ids)[: cfg.max_images])
        # image k in bias value c is row k·n_bias + c
        add(split, np.repeat(ids, n_bias), np.tile(np.arange(n_bias), len(ids)))
    train_ids = np.sort(prepared.loc[prepared["split"] == TRAIN_SPLIT, "id"].to_numpy(dtype=np.int64))
    add(TRAIN_SPLIT, train_ids, rng.integers(0, n_bias, len(train_ids)))
    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        list(tqdm(pool.map(lambda job: save_png(*job), jobs), total=len(jobs),
                  desc="prepare_palette: writing PNGs", unit="img"))
    return records


def build_palette_sets(data_cfg: DataConfig, cfg: PaletteConfig, prepared: pd.DataFrame, seed: int,
                       out: Path) -> tuple[pd.DataFrame, str]:
    """(manifest, what was done) of the every-bias sets and the unbiased train set written under `out`
    (empty when not built)."""
    cfg.check()
    grey = None if not cfg.enabled else grey_source(data_cfg)  # prepare refused more classes than bias values
    if grey is None:
        why = ("params 'palette.enabled' is false" if not cfg.enabled
               else f"data.source={data_cfg.source!r} carries its own bias")
        manifest = make_manifest([])
        write_manifest(manifest, out)
        return manifest, f"no every-bias sets ({why}); group metrics come from the prepared splits"
    manifest = make_manifest(palette_records(grey, prepared, data_cfg, cfg, seed, out))
    write_manifest(manifest, out)
    evaluation = manifest[manifest["split"].isin(EVAL_SPLITS)]
    counts = evaluation.groupby(["split", "target", "bias"]).size()
    n_train = int((manifest["split"] == TRAIN_SPLIT).sum())
    return manifest, (f"data.bias={data_cfg.bias}: {len(evaluation)} every-bias images "
                      f"({', '.join(f'{s} {int((manifest.split == s).sum())}' for s in EVAL_SPLITS)}), "
                      f"{counts.min()}-{counts.max()} per (split, target, bias) group; "
                      f"{n_train} unbiased train images")
