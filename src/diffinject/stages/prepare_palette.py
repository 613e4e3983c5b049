"""Stage `prepare_palette`: the valid and test digits of data/prepared in every bias value, the sets
evaluation reports group metrics on, and the train digits once each in a uniformly drawn bias value, an
unbiased train set for judges (`diffinject.data.palette`; the mechanism is `data.bias`).

data/prepared (ids and splits) + the grey source of params `data.*` -> data/palette/ (DisEnt layout +
manifest.parquet, splits train | valid | test; evaluation reads valid and test only; an empty manifest
for folder sources or `palette.enabled: false`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffinject.config import StageParams
from diffinject.data.manifest import read_manifest
from diffinject.data.palette import PaletteConfig, build_palette_sets
from diffinject.data.prepare import DataConfig
from diffinject.fsutil import atomic_dir
from diffinject.stages.paths import PALETTE, PREPARED

PARAMS = StageParams({"data": DataConfig, "palette": PaletteConfig})


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    p = PARAMS.load(params)
    prepared = read_manifest(root / PREPARED)
    with atomic_dir(root / PALETTE) as tmp:
        manifest, summary = build_palette_sets(p.data, p.palette, prepared, p.seed, tmp)
    print(f"prepare_palette: {summary} -> {root / PALETTE}")
    return {"n_images": len(manifest), "summary": summary}
