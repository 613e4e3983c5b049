"""Presets: partial params files in the repository's presets/ folder (gpu.yaml: a ~35 M-parameter DDPM),
each a mapping of params sections to the keys it changes. `python -m diffinject preset NAME` prints the
`dvc exp run -S ...` line that applies one as an experiment; with `--run` it runs that line. A preset is
checked before it is offered: every key must be a known key of its section, and the params with the
preset applied must build (so a typo fails here, not an hour into a GPU run)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from diffinject.config import read_yaml_mapping
from diffinject.errors import DiffinjectError

PRESETS = Path("presets")


def preset_names(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / PRESETS).glob("*.yaml"))


def load_preset(root: Path, name: str) -> dict[str, dict[str, Any]]:
    """presets/NAME.yaml as {section: {key: value}}; a missing or malformed file is a one-line error."""
    path = root / PRESETS / f"{name}.yaml"
    shape = "expected a mapping of params sections to mappings of keys"
    preset = read_yaml_mapping(path, f"no such preset (have {', '.join(preset_names(root)) or 'none'})", shape)
    if not all(isinstance(v, dict) for v in preset.values()):
        raise DiffinjectError(f"{path}: {shape}")
    return preset


def with_preset(params: dict[str, Any], preset: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A copy of `params` with the preset's keys set."""
    out = copy.deepcopy(params)
    for section, values in preset.items():
        out[section] = {**(out.get(section) or {}), **values}
    return out


def set_flags(preset: dict[str, dict[str, Any]]) -> list[str]:
    """`-S section.key=value` arguments of `dvc exp run` (values as YAML flow, which DVC parses)."""
    flags = []
    for section, values in preset.items():
        for key, value in values.items():
            flags += ["-S", f"{section}.{key}={json.dumps(value, separators=(',', ':'))}"]
    return flags
