"""Stage `train_judge`: the colour-blind judge of the synthetic quality report — the classifier
architecture of `vanilla` trained with CE on grey-scale train images (labels only; evaluation only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffinject.config import load_params
from diffinject.data.tensors import ImageTensors
from diffinject.models.training import JudgeConfig, train_classifier
from diffinject.stages.common import classifier_params, load_training_data, write_training_outputs
from diffinject.diffusion.synthetic_quality import to_grey

SECTION = "judge"
PARAMS = classifier_params(SECTION, JudgeConfig)


def grey(data: ImageTensors) -> ImageTensors:
    return ImageTensors(to_grey(data.images), data.targets, data.ids, f"grey({data.source})")


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    p = PARAMS.load(params)
    data = load_training_data(root)
    result = train_classifier(grey(data.train), grey(data.valid), data.num_classes, p.judge, p.trainer, p.seed, SECTION)
    return write_training_outputs(root, SECTION, result, p.judge, p.seed)


def main(params_path: str = "params.yaml") -> None:
    run(load_params(params_path))
