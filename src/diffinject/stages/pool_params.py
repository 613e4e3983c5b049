"""The params schemas of the stages that train on the synthetic pool: `debiased.*` and the
`debiased_<method>.*` sections (a method's own keys plus the pool's). Here, beside the stages, because
their default pool is a path of the pipeline (stages/paths.py), which the library does not know."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from diffinject.errors import DiffinjectError
from diffinject.models.configs import TrainConfig
from diffinject.models.disent_config import DisEntConfig
from diffinject.models.lc import LCConfig
from diffinject.models.lff import LfFConfig
from diffinject.stages.paths import SYNTHETIC_MANIFEST


def check_ratio(ratio: float | list[float] | None, section: str) -> None:
    """A fraction of |train| >= 0, or a non-empty list of them (the stage keeps the best on valid)."""
    where = f"params '{section}.bias_conflict_ratio'"
    if isinstance(ratio, (list, tuple)):
        if not ratio:
            raise DiffinjectError(f"{where}: got [], expected a number >= 0 or a non-empty list of them")
        if len(set(ratio)) < len(ratio):
            raise DiffinjectError(f"{where}: got {list(ratio)}, expected distinct ratios")
    for value in ratio if isinstance(ratio, (list, tuple)) else [ratio]:
        if value is not None and value < 0:
            raise DiffinjectError(f"{where}: got {ratio}, expected >= 0 (a fraction of |train|)")


@dataclass
class DebiasedConfig(TrainConfig):
    """`debiased.*`: the original train split plus `bias_conflict_ratio` × |train| pool samples."""

    loss: Literal["ce", "gce"] = "gce"  # the released DiffInject's retraining (ce against gce: docs/results.md)
    # a manifest of extra images (.parquet/.csv: id, path, target; default: the inject stage's); null = none
    pool: str | None = str(SYNTHETIC_MANIFEST)
    # pool samples added, as a fraction of |train|; a list: train at each, keep the best on valid (stages/mixing.py)
    bias_conflict_ratio: float | list[float] = field(default_factory=lambda: [0.1, 0.5])

    def check(self, section: str) -> None:
        super().check(section)
        check_ratio(self.bias_conflict_ratio, section)


@dataclass
class PoolKeys:
    """The keys every `debiased_<method>` section adds to its method's: a two-branch method (LfF, DisEnt,
    LC) on the original train split plus a draw from the synthetic pool. A mixin, listed first
    (`class DebiasedLfFConfig(PoolKeys, LfFConfig)`): its check runs the method's, then its own."""

    pool: str | None = str(SYNTHETIC_MANIFEST)  # as debiased.pool; the ratio is debiased.bias_conflict_ratio's (one home)
    # Which rows the biased (GCE) branch trains on: `original` keeps it as biased as the method's own (the
    # synthetic conflicts would teach it the class); `all` trains it on the mix. The debiased branch
    # trains on every row either way.
    biased_sees: Literal["original", "all"] = "original"



@dataclass
class DebiasedLfFConfig(PoolKeys, LfFConfig):
    """`debiased_lff.*`: LfF on the original train split plus a draw from the synthetic pool."""


@dataclass
class DebiasedDisEntConfig(PoolKeys, DisEntConfig):
    """`debiased_disent.*`: DisEnt on the original train split plus a draw from the synthetic pool."""


@dataclass
class DebiasedLCConfig(PoolKeys, LCConfig):
    """`debiased_lc.*`: LC on the original train split plus a draw from the synthetic pool."""
