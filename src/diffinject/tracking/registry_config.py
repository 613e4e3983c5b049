"""`registry.*` and the rule model selection compares by: which validation metric, in which direction,
over which candidate models, and what counts as better (strictly: a tie keeps the current champion)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from diffinject.errors import DiffinjectError

SECTION = "registry"
# The split model selection reads: never the test split.
SELECTION_SPLIT = "valid"


@dataclass
class RegistryConfig:
    """`registry.*`."""

    model_name: str = "diffinject-debiased"  # registered model name in MLflow
    # <model>.<split>.<metric> of metrics/eval.json; the split must be valid. <model> is the folder under
    # models/ that is logged and registered.
    metric: str = "debiased.valid.acc"
    direction: Literal["maximize", "minimize"] = "maximize"  # maximize accuracies, minimize gaps
    experiment: str = "diffinject"  # MLflow experiment of pipeline runs and search studies
    # "pickle": reloads as the network's own class (needs the diffinject package importable);
    # "pt2": torch.export graph, reloads as a GraphModule without diffinject (MLflow 3's default).
    serialization_format: Literal["pickle", "pt2"] = "pickle"
    # models/ folders compared on registry.metric's split and metric (e.g. valid.acc); the best one is
    # registered. null: only the model registry.metric names.
    candidates: list[str] | None = field(default_factory=lambda: ["debiased", "debiased_lff", "debiased_disent", "debiased_lc"])  # the DiffInject-based models

    def check(self) -> None:
        parts = self.metric.split(".")
        if len(parts) != 3 or not all(parts):
            raise DiffinjectError(
                f"params '{SECTION}.metric': got {self.metric!r}, expected <model>.{SELECTION_SPLIT}.<metric> "
                "from metrics/eval.json, e.g. debiased.valid.acc"
            )
        if parts[1] != SELECTION_SPLIT:
            raise DiffinjectError(
                f"params '{SECTION}.metric': {self.metric!r} is on the {parts[1]} split; model selection and "
                f"search use the {SELECTION_SPLIT} split only (e.g. {parts[0]}.{SELECTION_SPLIT}.{parts[2]})"
            )
        if not self.model_name.strip():
            raise DiffinjectError(f"params '{SECTION}.model_name': empty (expected a registered model name)")
        if not self.experiment.strip():
            raise DiffinjectError(f"params '{SECTION}.experiment': empty (expected an MLflow experiment name)")
        if self.candidates is not None:
            if not self.candidates:
                raise DiffinjectError(f"params '{SECTION}.candidates': empty (expected model folder names, or null)")
            for name in self.candidates:
                if not name or "." in name or "/" in name:
                    raise DiffinjectError(f"params '{SECTION}.candidates': {name!r} is not a folder name under models/")

    @property
    def model(self) -> str:
        """The models/ folder the metric is about (`debiased` for `debiased.valid.acc`)."""
        return self.metric.split(".")[0]

    @property
    def measure(self) -> str:
        """`<split>.<metric>` of registry.metric (valid.acc), what candidates and versions compare on."""
        return self.metric.split(".", 1)[1]

    def candidate_metrics(self) -> list[str]:
        """`<candidate>.<split>.<metric>` of every candidate, in order."""
        return [f"{name}.{self.measure}" for name in (self.candidates or [self.model])]


def best_candidate(values: dict[str, float], cfg: RegistryConfig) -> str:
    """The candidate metric (`<model>.valid.acc`) with the best value; the first listed wins a tie, a NaN
    never wins."""
    best: str | None = None
    for metric in cfg.candidate_metrics():
        value = values[metric]
        if not math.isnan(value) and (best is None or better(value, values[best], cfg.direction)):
            best = metric
    return best or cfg.candidate_metrics()[0]


def same_measure(a: str, b: str) -> bool:
    """`debiased.valid.acc` and `debiased_lff.valid.acc` measure the same thing of two models."""
    return a.split(".", 1)[-1] == b.split(".", 1)[-1]


def better(new: float, old: float, direction: str) -> bool:
    """Strictly better: a tie keeps the current champion."""
    return new > old if direction == "maximize" else new < old
