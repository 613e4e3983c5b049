"""Stage `prepare`: a data source -> data/prepared/ (DisEnt layout + manifest.parquet) and sample grids."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from diffinject.config import StageParams, load_params
from diffinject.data.grid import sample_grid
from diffinject.data.manifest import INFO_NAME, SPLITS, read_manifest
from diffinject.data.prepare import DataConfig, prepare
from diffinject.fsutil import atomic_dir, atomic_file

OUT_DIR = Path("data/prepared")
PLOTS_DIR = Path("metrics/plots/prepare")
PARAMS = StageParams({"data": DataConfig})


def run(params: dict, out_dir: Path = OUT_DIR, plots_dir: Path = PLOTS_DIR) -> dict:
    p = PARAMS.load(params)
    cfg, seed = p.data, p.seed
    with atomic_dir(out_dir) as tmp:
        summary = prepare(cfg, seed, tmp)
        info = dict(dataclasses.asdict(summary), params=dataclasses.asdict(cfg), seed=seed)
        (tmp / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    manifest = read_manifest(out_dir)
    for split in SPLITS:
        with atomic_file(plots_dir / f"samples_{split}.png") as tmp_png:
            sample_grid(out_dir, manifest, split, tmp_png, seed=seed)
    print(f"prepare: {summary.n_images} images, {summary.n_classes} classes -> {out_dir}")
    return info


def main(params_path: str = "params.yaml") -> None:
    run(load_params(params_path))
