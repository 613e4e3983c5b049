"""Every-colour evaluation sets: each valid / test digit of a grey source (mnist5k, idx) coloured in
every palette colour, for group metrics that mean something.

With 500 test images and 100 (target, colour) groups, the prepared test split holds ~5 images per group,
so a worst-group accuracy reads 0.0 for every model. Here each image appears once per colour: each group
holds the split's images of its class (~50 for mnist5k), and the set is unbiased by construction (every
colour equally often within every class). The colours are the LfF palette with the same per-image noise
(`data.color_std`) as `prepare`. Folder sources carry their own colours (or no bias labels at all):
there the set is empty and evaluation reports the prepared splits only.

Manifest columns are those of data/prepared (split valid|test); an image's id is its source id (it
repeats once per colour, the path is unique).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from diffinject.config import check_at_least
from diffinject.data.colour import colorize
from diffinject.data.manifest import image_relpath, make_manifest, write_manifest
from diffinject.data.prepare import WRITE_THREADS, DataConfig, resize_grey, save_png
from diffinject.data.sources import GreyImages, load_idx_folder, load_mnist5k

EVAL_SPLITS = ("valid", "test")
# Added to the pipeline seed, so the every-colour noise is not the prepared splits' noise replayed.
SEED_OFFSET = 7919


@dataclass
class PaletteConfig:
    """`palette.*`."""

    enabled: bool = True
    max_images: int = 1000  # per split, before × the number of colours (idx sources: 10,000 test digits)

    def check(self) -> None:
        check_at_least(self, "palette", 1, "max_images")


def grey_source(cfg: DataConfig) -> GreyImages | None:
    """The grey source `prepare` coloured, or None for folder sources (already coloured)."""
    if cfg.source == "mnist5k":
        return load_mnist5k()
    if cfg.source == "idx":
        return load_idx_folder(cfg.path)
    return None


def palette_records(grey: GreyImages, prepared: pd.DataFrame, data_cfg: DataConfig, cfg: PaletteConfig,
                    seed: int, out: Path) -> list[dict]:
    """Write every chosen valid/test image in every colour under `out`; returns manifest records."""
    n_colours = int(grey.targets.max()) + 1
    position = {int(i): k for k, i in enumerate(grey.ids.tolist())}
    rng = np.random.default_rng(seed + SEED_OFFSET)
    records: list[dict] = []
    jobs: list[tuple[np.ndarray, Path]] = []
    for split in EVAL_SPLITS:
        ids = prepared.loc[prepared["split"] == split, "id"].to_numpy(dtype=np.int64)
        ids = np.sort(rng.permutation(ids)[: cfg.max_images])
        rows = np.array([position[int(i)] for i in ids], dtype=np.int64)
        images = resize_grey(grey.images[rows], data_cfg.image_size)  # (n, H, W)
        bias = np.tile(np.arange(n_colours), len(rows))  # image k in colour c is row k·n_colours + c
        rgb = colorize(np.repeat(images, n_colours, axis=0), bias, data_cfg.color_std, rng)
        targets = np.repeat(grey.targets[rows], n_colours)
        for k in range(len(bias)):
            id_, target, b = int(ids[k // n_colours]), int(targets[k]), int(bias[k])
            rel = image_relpath(split, target, b, b == target, id_)
            records.append(dict(id=id_, path=rel, split=split, target=target, bias=b, aligned=b == target))
            jobs.append((rgb[k], out / rel))
    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        list(tqdm(pool.map(lambda job: save_png(*job), jobs), total=len(jobs),
                  desc="prepare_palette: writing PNGs", unit="img"))
    return records


def build_palette_sets(data_cfg: DataConfig, cfg: PaletteConfig, prepared: pd.DataFrame, seed: int,
                       out: Path) -> tuple[pd.DataFrame, str]:
    """(manifest, what was done) of the every-colour sets written under `out` (empty when not built)."""
    cfg.check()
    grey = None if not cfg.enabled else grey_source(data_cfg)  # prepare refused more classes than colours
    if grey is None:
        why = ("params 'palette.enabled' is false" if not cfg.enabled
               else f"data.source={data_cfg.source!r} is not coloured by prepare")
        manifest = make_manifest([])
        write_manifest(manifest, out)
        return manifest, f"no every-colour sets ({why}); group metrics come from the prepared splits"
    manifest = make_manifest(palette_records(grey, prepared, data_cfg, cfg, seed, out))
    write_manifest(manifest, out)
    counts = manifest.groupby(["split", "target", "bias"]).size()
    return manifest, (f"{len(manifest)} images ({', '.join(f'{s} {int((manifest.split == s).sum())}' for s in EVAL_SPLITS)}), "
                      f"{counts.min()}-{counts.max()} per (split, target, colour) group")
