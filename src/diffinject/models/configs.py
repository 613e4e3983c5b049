"""The params schemas of the one-network classifier sections: the keys every classifier section shares
(`OptimConfig`), `vanilla.*`, `biased.*`, `judge.*` and `upsample.*`. The sections that train on the
synthetic pool add theirs in stages/pool_params.py; LfF's, DisEnt's and LC's are beside their methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from diffinject.config import check_at_least
from diffinject.errors import DiffinjectError
from diffinject.models.classifier import SELECT_MODES
from diffinject.models.losses import DEFAULT_GCE_Q


@dataclass
class OptimConfig:
    """Keys every classifier-training section shares."""

    model: Literal["mlp", "resnet18"] = "mlp"
    pretrained: str | None = None  # resnet18 only: a local torchvision ImageNet state_dict (.pth)
    lr: float = 1e-3  # Adam
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 50
    select: Literal["best", "last"] = "best"  # epoch kept: best validation accuracy, or the last one

    def check(self, section: str) -> None:
        check_at_least(self, section, 0, "lr", strict=True)
        check_at_least(self, section, 0, "weight_decay")
        check_at_least(self, section, 1, "batch_size", "epochs")
        if self.select not in SELECT_MODES:
            raise DiffinjectError(f"params '{section}.select': got {self.select!r}, expected one of {', '.join(SELECT_MODES)}")
        if self.pretrained is not None and self.model != "resnet18":
            raise DiffinjectError(f"params '{section}.pretrained': ImageNet weights are for resnet18, but {section}.model is {self.model!r}")


@dataclass
class TrainConfig(OptimConfig):
    """`vanilla.*` (and the base of the other one-network sections): one network, one loss."""

    loss: Literal["ce", "gce"] = "ce"
    gce_q: float = DEFAULT_GCE_Q

    def check(self, section: str) -> None:
        super().check(section)
        if not 0 < self.gce_q <= 1:
            raise DiffinjectError(f"params '{section}.gce_q': got {self.gce_q}, expected 0 < q <= 1")


@dataclass
class BiasedConfig(TrainConfig):
    """`biased.*`: the GCE model that mining reads (DiffInject CMNIST: Adam 1e-3, batch 256). It is
    meant to be biased, so the last epoch is kept, not the best on valid."""

    loss: Literal["ce", "gce"] = "gce"
    epochs: int = 10
    select: Literal["best", "last"] = "last"


@dataclass
class JudgeConfig(TrainConfig):
    """`judge.*`: the colour-blind judge of the synthetic quality report (grey-scale images)."""

    epochs: int = 20


@dataclass
class UpsampleConfig(TrainConfig):
    """`upsample.*`: the train split plus copies of the mined conflicts (JTT), plain CE by default; as many
    copies as the pool stages add (debiased.bias_conflict_ratio, the ratio's one home)."""


