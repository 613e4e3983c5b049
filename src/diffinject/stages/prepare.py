"""Stage `prepare`: a data source -> data/prepared/ (DisEnt layout + manifest.parquet) and sample grids."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from diffinject.config import StageParams
from diffinject.data.grid import sample_grid
from diffinject.data.manifest import INFO_NAME, SPLITS, read_manifest
from diffinject.data.prepare import DataConfig, prepare
from diffinject.fsutil import atomic_dir, atomic_file
from diffinject.stages.paths import PLOTS, PREPARED

PARAMS = StageParams({"data": DataConfig})


def run(params: dict, root: Path = Path(".")) -> dict:
    p = PARAMS.load(params)
    out_dir, plots_dir = root / PREPARED, root / PLOTS / "prepare"
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
