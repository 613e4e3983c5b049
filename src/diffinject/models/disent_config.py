"""`disent.*`: DisEnt's params schema (models/disent.py trains it), apart from its training and its
network, so the sections built on it (`debiased_disent.*`, stages/pool_params.py) do not make every
pool stage import DisEnt's code."""

from __future__ import annotations

from dataclasses import dataclass

from diffinject.config import check_at_least
from diffinject.models.lff import LfFConfig


@dataclass
class DisEntConfig(LfFConfig):
    """`disent.*`: DisEnt (two encoders, relative-difficulty weights, bias-feature swapping); GCE's q and
    the EMA's α as LfF's, with LfF's checks."""

    lambda_dis: float = 10.0  # λ_dis (official CMNIST: --lambda_dis_align 10)
    lambda_swap_b: float = 10.0  # λ_swap_b (--lambda_swap_align 10)
    lambda_swap: float = 1.0  # λ_swap (--lambda_swap 1)
    swap_after: int = 400  # optimisation steps before the feature swap starts (official: 10,000 of 50,000)
    # the swap phase's lr decay: × lr_decay_gamma every lr_decay_every × (the run's steps) once the swap has
    # started (official: 0.5 every 10,000 of 50,000 steps, i.e. 0.2); 0: a constant lr
    lr_decay_every: float = 0.0
    lr_decay_gamma: float = 0.5
    epochs: int = 100

    def check(self, section: str) -> None:
        super().check(section)
        check_at_least(self, section, 0, "lambda_dis", "lambda_swap_b", "lambda_swap", "swap_after", "lr_decay_every")
        check_at_least(self, section, 0, "lr_decay_gamma", strict=True)
