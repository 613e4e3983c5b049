"""`python -m diffinject promote VERSION`: move the alias `champion` of `registry.model_name` to VERSION
by hand (the register stage moves it only on improvement). Not a DVC stage: it changes the registry,
not the workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from diffinject.config import StageParams
from diffinject.errors import DiffinjectError
from diffinject.tracking import registry, registry_config, runs

PARAMS = StageParams({registry_config.SECTION: registry_config.RegistryConfig}, seed=False)


def run(params: dict[str, Any], root: Path = Path("."), version: int = 0) -> int | None:
    """Returns the previous champion's version (None when there was none)."""
    cfg = PARAMS.load(params).registry
    if version < 1:
        raise DiffinjectError(f"promote: version {version}: expected a registered version number >= 1")
    runs.setup_experiment(cfg.experiment, root)
    return registry.promote(MlflowClient(), cfg.model_name, version)
