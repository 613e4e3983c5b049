"""Stage `ae_debias`, a baseline (CV-coop-contrastive-debias): a convolutional autoencoder trained in
front of the frozen GCE-biased classifier of models/biased, so that the classifier, unchanged, reads
AE(x) instead of x (`diffinject.models.ae_debias`). Its unbiased accuracy is models/biased's on AE(x).

params `ae.*`. data/prepared + models/biased -> models/ae_debias/ (cls ∘ AE: NetConfig front "ae"),
metrics/ae_debias.json, metrics/plots/train/ae_debias.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffinject.config import load_params
from diffinject.errors import DiffinjectError
from diffinject.models.checkpoint import load_classifier
from diffinject.models.ae_debias import AEConfig, train_ae_debias
from diffinject.stages.common import classifier_params, load_training_data, write_training_outputs
from diffinject.stages.paths import missing_model_hint, model_dir

SECTION = "ae"
MODEL = "ae_debias"
PARAMS = classifier_params(SECTION, AEConfig)


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    p = PARAMS.load(params)
    cfg, trainer_cfg, seed = p.ae, p.trainer, p.seed
    data = load_training_data(root)
    biased = model_dir(root, "biased")
    classifier, classifier_cfg, _ = load_classifier(biased, num_classes=data.num_classes, image_shape=data.train.shape,
                                                    missing_hint=missing_model_hint("biased"))
    if classifier_cfg.front is not None:
        raise DiffinjectError(f"{biased}: expected a plain classifier, got one with front {classifier_cfg.front!r}")
    result = train_ae_debias(data.train, data.valid, classifier, classifier_cfg, cfg, trainer_cfg, seed, SECTION)
    return write_training_outputs(root, MODEL, result, cfg, seed)


def main(params_path: str = "params.yaml") -> None:
    run(load_params(params_path))
