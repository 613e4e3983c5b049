"""The manifest (`manifest.parquet`) and the DisEnt on-disk layout it indexes.

Columns: id, path (relative to the dataset root), split (train|valid|test), target, bias, aligned.
`bias` and `aligned` are null for data without bias labels. Images live at
`{split}/{align|conflict}/{target}/{id}_{target}_{bias}.png` (DisEnt/LfF releases use the same names),
or `{split}/{target}/{id}_{target}.png` when there is no bias label.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from diffinject.errors import DiffinjectError

SPLITS = ("train", "valid", "test")
COLUMNS = ("id", "path", "split", "target", "bias", "aligned")
MANIFEST_NAME = "manifest.parquet"
INFO_NAME = "info.json"
# `{id}_{target}_{bias}.ext` — DisEnt's naming (ids may carry their own underscores in some releases,
# so the target and bias are the last two fields).
_DISENT_NAME = re.compile(r"^(?P<id>.+)_(?P<target>-?\d+)_(?P<bias>-?\d+)\.(?P<ext>[A-Za-z0-9]+)$")


def image_relpath(split: str, target: int, bias: int | None, aligned: bool | None, id_: int, ext: str = "png") -> str:
    """The DisEnt relative path of one image."""
    if bias is None:
        return f"{split}/{target}/{id_}_{target}.{ext}"
    group = "align" if aligned else "conflict"
    return f"{split}/{group}/{target}/{id_}_{target}_{bias}.{ext}"


def parse_disent_name(path: Path) -> tuple[str, int, int]:
    """(id, target, bias) from a `{id}_{target}_{bias}.png` file name."""
    match = _DISENT_NAME.match(path.name)
    if match is None:
        raise DiffinjectError(f"{path}: file name does not parse as {{id}}_{{target}}_{{bias}}.png")
    return match["id"], int(match["target"]), int(match["bias"])


def make_manifest(records: list[dict]) -> pd.DataFrame:
    """A manifest in canonical order (split train/valid/test, then id) with nullable bias columns."""
    df = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    df["id"] = df["id"].astype("int64")
    df["path"] = df["path"].astype("string")
    df["split"] = pd.Categorical(df["split"], categories=list(SPLITS))
    df["target"] = df["target"].astype("int64")
    df["bias"] = df["bias"].astype("Int64")
    df["aligned"] = df["aligned"].astype("boolean")
    df = df.sort_values(["split", "id"], kind="stable").reset_index(drop=True)
    df["split"] = df["split"].astype("string")
    return df


def read_manifest(root: str | Path) -> pd.DataFrame:
    """Read `root/manifest.parquet`, checking it has the contract's columns."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise DiffinjectError(f"{path}: manifest not found (run the `prepare` stage first)")
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DiffinjectError(f"{path}: not a readable parquet manifest ({exc})") from exc
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DiffinjectError(f"{path}: manifest lacks columns {missing} (expected {list(COLUMNS)})")
    return df


def write_manifest(df: pd.DataFrame, root: str | Path) -> None:
    df.to_parquet(Path(root) / MANIFEST_NAME, index=False)
