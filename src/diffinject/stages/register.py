"""Stage `register`: this pipeline run as one MLflow parent run (params, metrics, plots, git commit, DVC
hashes from dvc.lock, a child run per training stage; `diffinject.tracking.runs`), the classifier of
`registry.candidates` (default debiased, debiased_lff) best on the measure of `registry.metric`
(valid.acc) logged as an MLflow model and registered as a new version of `registry.model_name`, which becomes `champion` only when it beats the current champion on the
validation metric, else `challenger` (`diffinject.tracking.registry`). It also says whether the
generator helped: the best DiffInject-based model against the best non-generative one on that measure
(`registry_config.generator_comparison`); with baselines among `registry.candidates` the champion is the
best debiased model of any kind. A measure that needs bias labels is refused unless
`registry.use_bias_labels: true`, and is then named in the log and the version's tags.

metrics/*.json, models/<model>/, dvc.lock -> MLflow store (`diffinject.tracking.store`),
metrics/register.json (version, alias, reason, generator_vs_non_generative).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from diffinject.config import StageParams
from diffinject.data.manifest import read_manifest
from diffinject.data.tensors import load_split, num_classes_of
from diffinject.fsutil import write_json
from diffinject.models import autoencoder, disent_net
from diffinject.models.checkpoint import load_classifier
from diffinject.models.classifier import to_unit_float
from diffinject.stages.paths import METRICS, PREPARED, missing_model_hint, model_dir
from diffinject.tracking import metrics_files, runs, store
from diffinject.tracking.model_logging import log_classifier
from diffinject.tracking.registry import TAG_FILES, cut_short_version, model_files_sha256, register
from diffinject.tracking.registry_config import (SECTION, SELECTION_SPLIT, WITH_BIAS_LABELS, RegistryConfig, best_candidate,
                                                generator_comparison, generator_line)

# Validation images logged as the model's input example (and so its signature).
EXAMPLE_IMAGES = 4
# registry.* alone decides what this stage writes; the MLflow run also records every param (runs.py).
PARAMS = StageParams({SECTION: RegistryConfig}, seed=False)


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    cfg = PARAMS.load(params).registry
    metrics_dir = root / METRICS
    metrics = metrics_files.read_metrics(metrics_dir)
    param = f"{SECTION}.metric" if cfg.candidates is None else f"{SECTION}.candidates"
    values = {name: metrics_files.require_metric(metrics, name, metrics_dir, param) for name in cfg.candidate_metrics()}
    metric = best_candidate(values, cfg)
    model, value = metric.split(".")[0], values[metric]
    others = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if k != metric)
    print(f"register: candidate {model} ({metric} {value:.4f}{'; ' + others if others else ''})")
    if cfg.reads_bias_labels:
        print(f"register: {WITH_BIAS_LABELS} ({SECTION}.use_bias_labels: true; {cfg.measure})")
    comparison = generator_comparison(metrics, cfg)
    if comparison is not None:
        print(f"register: {generator_line(comparison)}")
    manifest = read_manifest(root / PREPARED)
    valid = load_split(root / PREPARED, SELECTION_SPLIT, manifest)
    net, _, _ = load_classifier(model_dir(root, model), num_classes=num_classes_of(manifest),
                                image_shape=valid.shape, missing_hint=missing_model_hint(model),
                                architectures=(autoencoder, disent_net))
    example = to_unit_float(valid.images[:EXAMPLE_IMAGES]).numpy()  # (B, C, H, W) float32 in [0, 1]
    files_sha256 = model_files_sha256(model_dir(root, model))
    with runs.pipeline_run(root, params, cfg.experiment) as parent:  # marks a killed register's run FAILED
        client = MlflowClient()
        with store.store_lock(root):  # compare with the champion and move the alias as one step
            cut_short = cut_short_version(client, cfg.model_name, files_sha256)
            model_uri = None if cut_short else log_classifier(net, example, cfg.serialization_format).model_uri
            decision = register(client, model_uri, parent.info.run_id, value, cfg, metric=metric, cut_short=cut_short,
                                tags={"run_name": parent.info.run_name, "diffinject.model": model, TAG_FILES: files_sha256,
                                      "diffinject.selection": WITH_BIAS_LABELS if cfg.reads_bias_labels else "valid accuracy, no bias label"})
    result = dict(decision.as_dict(), model=model, candidates=values, selection_reads_bias_labels=cfg.reads_bias_labels,
                  generator_vs_non_generative=comparison)
    write_json(metrics_dir / "register.json", result)
    return result
