"""`registry.*` and the rule model selection compares by: which validation metric, in which direction,
over which candidate models, and what counts as better (strictly: a tie keeps the current champion)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from diffinject.errors import DiffinjectError

SECTION = "registry"
# The split model selection reads: never the test split.
SELECTION_SPLIT = "valid"
# Measures of metrics/eval.json that read no bias label; every other one (aligned/conflict/worst-group
# accuracy, the fairness gaps, the group counts) needs the validation split's bias labels.
LABEL_FREE_METRICS = ("acc",)
# How the registry's log names a selection that read validation bias labels.
WITH_BIAS_LABELS = "selection with validation bias labels"
# The models that add no generated image: the baselines and the upsample control (copies of mined
# originals). The DiffInject-based ones are `debiased` and `debiased_<method>`; `biased` is neither.
NON_GENERATIVE = ("vanilla", "lff", "disent", "lc", "upsample", "ae_debias")


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
    # A metric that needs bias labels (worst_group_acc, conflict_acc, the gaps) is accepted only when
    # this is true, and the registry's log and tags then say the selection read validation bias labels.
    use_bias_labels: bool = False

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
        if self.reads_bias_labels and not self.use_bias_labels:
            raise DiffinjectError(
                f"params '{SECTION}.metric': {parts[2]} needs the validation split's bias labels, which model "
                f"selection and search do not read by default (use {parts[0]}.{SELECTION_SPLIT}.acc, or set "
                f"{SECTION}.use_bias_labels: true to select with validation bias labels)"
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
    def reads_bias_labels(self) -> bool:
        """The measure needs bias labels (accepted only with use_bias_labels: check)."""
        return self.metric.split(".")[-1] not in LABEL_FREE_METRICS

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


def generator_based(model: str) -> bool:
    """A model trained on the synthetic pool: `debiased` or `debiased_<method>`."""
    return model == "debiased" or model.startswith("debiased_")


def generator_comparison(metrics: dict[str, float], cfg: RegistryConfig) -> dict[str, Any] | None:
    """Did the generator help here? The best DiffInject-based model against the best non-generative one
    on the registry's measure (`<model>.valid.acc` keys of metrics/eval.json), whichever of them
    `registry.candidates` names; `margin` > 0 when the generator's is better (a gap that is lower). None
    when either side was not evaluated."""
    sides: dict[str, dict[str, float]] = {"generator": {}, "non_generative": {}}
    for key, value in metrics.items():
        model, _, measure = key.partition(".")
        if measure != cfg.measure or "/" in model or math.isnan(value):
            continue
        side = "generator" if generator_based(model) else "non_generative" if model in NON_GENERATIVE else None
        if side:
            sides[side][model] = value
    if not all(sides.values()):
        return None
    sign = 1.0 if cfg.direction == "maximize" else -1.0
    best = {side: max(values.items(), key=lambda kv: sign * kv[1]) for side, values in sides.items()}
    (gen, gen_value), (base, base_value) = best["generator"], best["non_generative"]
    margin = sign * (gen_value - base_value)
    return {"measure": cfg.measure, "generator_model": gen, "generator_value": gen_value,
            "non_generative_model": base, "non_generative_value": base_value, "margin": margin,
            "helped": margin > 0}


def generator_line(comparison: dict[str, Any]) -> str:
    """One sentence: did the generator help, by how much, against which model."""
    verdict = "helped" if comparison["helped"] else "did not help"
    return (f"the generator {verdict} here: best DiffInject-based {comparison['generator_model']} "
            f"{comparison['measure']} {comparison['generator_value']:.4f} vs best non-generative "
            f"{comparison['non_generative_model']} {comparison['non_generative_value']:.4f} "
            f"({100 * comparison['margin']:+.1f} points)")
