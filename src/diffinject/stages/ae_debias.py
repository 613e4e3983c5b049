"""Stage `ae_debias`, a baseline (CV-coop-contrastive-debias): a convolutional autoencoder trained in
front of the frozen GCE-biased classifier of models/biased, so that the classifier, unchanged, reads
AE(x) instead of x (`diffinject.models.ae_debias`). Its unbiased accuracy is models/biased's on AE(x).

params `ae.*`. data/prepared + models/biased -> models/ae_debias/ (cls ∘ AE: NetConfig front "ae"),
metrics/ae_debias.json, metrics/plots/train/ae_debias.csv.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from diffinject.errors import DiffinjectError
from diffinject.models.ae_debias import AEConfig, train_ae_debias
from diffinject.models.checkpoint import load_classifier
from diffinject.stages.common import classifier_params, fit_and_write, load_training_data
from diffinject.stages.paths import missing_model_hint, model_dir

SECTION = "ae"
MODEL = "ae_debias"
PARAMS = classifier_params(SECTION, AEConfig)


def run(params: dict[str, Any], root: Path = Path("."), callbacks: list | None = None) -> dict[str, Any]:
    """`callbacks` join the training's Trainer (the search's pruning callback)."""
    p = PARAMS.load(params)
    cfg = p.ae
    data = load_training_data(root)
    biased = model_dir(root, "biased")
    classifier, classifier_cfg, _ = load_classifier(biased, num_classes=data.num_classes, image_shape=data.train.shape,
                                                    missing_hint=missing_model_hint("biased"))
    if classifier_cfg.front is not None:
        raise DiffinjectError(f"{biased}: expected a plain classifier, got one with front {classifier_cfg.front!r}")
    fit = partial(_fit_in_front_of, classifier, classifier_cfg)
    return fit_and_write(root, MODEL, cfg, p, data.train, data, fit, section=SECTION, callbacks=callbacks)


def _fit_in_front_of(classifier, classifier_cfg, train, valid, num_classes, cfg, trainer_cfg, seed, section, callbacks=None):
    """train_ae_debias in fit_and_write's shape: the class count is the frozen classifier's."""
    return train_ae_debias(train, valid, classifier, classifier_cfg, cfg, trainer_cfg, seed, section, callbacks)
