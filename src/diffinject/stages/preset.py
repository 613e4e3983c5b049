"""Command `preset`: print (or with --run, run) the `dvc exp run -S ...` line that applies presets/NAME.yaml
as a DVC experiment, after checking that the params with the preset applied build (diffinject/presets.py)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

from diffinject.config import StageParams
from diffinject.data.prepare import DataConfig
from diffinject.diffusion.injection_params import InjectionParams
from diffinject.diffusion.model import DiffusionConfig, build_unet
from diffinject.errors import DiffinjectError
from diffinject.presets import load_preset, set_flags, with_preset

# The sections a preset may set, checked by building them from the params with the preset applied.
PARAMS = StageParams({"data": DataConfig, "diffusion": DiffusionConfig, "injection": InjectionParams}, seed=False)


def run(params: dict[str, Any], root: Path = Path("."), name: str = "", execute: bool = False) -> list[str]:
    preset = load_preset(root, name)
    unknown = sorted(set(preset) - set(PARAMS.sections))
    if unknown:
        raise DiffinjectError(f"presets/{name}.yaml: section {unknown[0]!r} is not one a preset may set "
                              f"({', '.join(PARAMS.sections)})")
    configs = PARAMS.load(with_preset(params, preset))
    build_unet(configs.diffusion, configs.data.image_size, 3)  # e.g. an image size the UNet's levels cannot halve
    command = ["dvc", "exp", "run", *set_flags(preset)]
    print(shlex.join(command))
    if execute:
        if shutil.which("dvc") is None:
            raise DiffinjectError("preset --run: dvc is not on PATH (activate the environment, or run the line above)")
        subprocess.run(command, cwd=root, check=True)
    return command
