"""One MLflow parent run per pipeline run (`dvc repro` / `dvc exp run`), with a child run per training
stage. What a run records, and under which keys:

| what | where | keys |
|---|---|---|
| every param of params.yaml | parent params | dotted: `injection.h_gamma` |
| metrics/eval.json | parent metrics | `<model>.<split>.<metric>`: `debiased.test.acc` |
| every other metrics/<name>.json | parent metrics | `<name>/<dotted path>`: `inject/label_fidelity` |
| DVC md5 of every data set and model (dvc.lock outs) | parent params | `dvc.<path>.md5`: `dvc.data/prepared.md5` |
| every data set of dvc.lock (outs under data/) | parent dataset inputs | name = DVC path, digest = md5, context = the stage that wrote it |
| the data sets a training stage read (its deps under data/) | child dataset inputs | as above, context `training` |
| git commit, DVC experiment | parent tags | `git.commit` (+ MLflow's own), `dvc.exp_name`, `dvc.baseline_rev` |
| plots, sample grids and curves (all of metrics/plots/), params.yaml, dvc.lock | parent artifacts | `plots/...`, `pipeline/` |
| metrics/<name>.json + curve metrics/plots/train/<name>.csv | child run `<name>` | `valid.acc`; curve columns per epoch (`valid_acc`, step = epoch) |

Reading the metrics files and curves: metrics_files.py; the hashes and data sets of dvc.lock: dvc_lock.py;
which process owns a run, and marking FAILED the runs of a process that is gone: stale_runs.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import mlflow
from sqlalchemy.exc import SQLAlchemyError
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from diffinject.errors import DiffinjectError, first_line
from diffinject.tracking import store
from diffinject.tracking.dvc_lock import DVC_LOCK, dvc_hashes, pipeline_datasets, read_lock, training_datasets
from diffinject.tracking.metrics_files import (CURVES_DIR, METRICS_DIR, PLOTS_DIR, curve_metrics, flatten, is_number,
                                               read_curve, read_json, read_metrics)
from diffinject.tracking.stale_runs import mark_stale_runs, owner_tags

PARAMS_FILE = Path("params.yaml")
PLOTS_ARTIFACTS = "plots"
ENV_EXP_NAME = "DVC_EXP_NAME"
ENV_BASELINE_REV = "DVC_EXP_BASELINE_REV"
SHORT_COMMIT = 7
PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's tag that nests a run under another
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # shown by the MLflow UI
# MLflow 3's UI opens an experiment of this kind on its training runs (not the GenAI traces overview).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# MLflow's log_batch limits per call (mlflow.utils.validation).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100


def param_value(value: Any) -> str:
    """A params.yaml value as MLflow stores it (a string): YAML spelling for null, bools and lists; a
    URL's password (search.storage) is never logged."""
    return store.redacted(value) if isinstance(value, str) else json.dumps(value)


def git_commit(root: Path) -> str | None:
    """HEAD of the repository at `root` (a DVC temp copy has the experiment's baseline), None outside git."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run_name(root: Path) -> str:
    """The DVC experiment's name during `dvc exp run`, else `<short commit>-<YYYYmmdd-HHMMSS>`."""
    name = os.environ.get(ENV_EXP_NAME)
    if name:
        return name
    commit = git_commit(root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{commit[:SHORT_COMMIT]}-{stamp}" if commit else f"run-{stamp}"


def log_batched(client: MlflowClient, run_id: str, metrics: list[Metric] = (), params: list[Param] = (),
                tags: list[RunTag] = ()) -> None:
    """log_batch within MLflow's per-call limits."""
    metrics, params = list(metrics), list(params)
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i: i + MAX_METRICS_PER_BATCH])
    for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[i: i + MAX_PARAMS_PER_BATCH])
    if tags:
        client.log_batch(run_id, tags=list(tags))


def setup_experiment(name: str, root: Path | None = None) -> str:
    """Point MLflow at the store (store.py) and return the id of experiment `name`, creating it with its
    artifacts beside a local database. Serialised between processes (schema and experiment creation)."""
    uri = store.tracking_uri(root)
    store.ensure_sqlite_dir(uri)
    store.check_database(uri)
    mlflow.set_tracking_uri(uri)
    with store.store_lock(root):
        try:
            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name(name)
        except (ImportError, MlflowException, SQLAlchemyError) as exc:
            # a missing database driver, a server that refuses, a URI MLflow does not know: one line, and
            # never the URI's password
            where = store.ENV_TRACKING_URI if os.environ.get(store.ENV_TRACKING_URI) else "the tracking store"
            raise DiffinjectError(f"{where} {store.redacted(uri)}: cannot open the MLflow store "
                                  f"({first_line(exc).replace(uri, store.redacted(uri))})") from exc
        if experiment is None:
            return client.create_experiment(name, artifact_location=store.artifact_location(uri), tags=EXPERIMENT_KIND)
        for key, value in EXPERIMENT_KIND.items():
            if key not in experiment.tags:
                client.set_experiment_tag(experiment.experiment_id, key, value)
        mark_stale_runs(client, experiment.experiment_id)
        return experiment.experiment_id


def log_training_children(client: MlflowClient, experiment_id: str, parent_id: str, root: Path,
                          params: dict[str, Any], lock: dict[str, Any]) -> list[str]:
    """One child run per training stage that left a curve (metrics/plots/train/<name>.csv)."""
    names = []
    now = int(time.time() * 1000)
    for curve in sorted((root / CURVES_DIR).glob("*.csv")):
        name = curve.stem
        child = client.create_run(experiment_id, run_name=name, tags={PARENT_RUN_ID: parent_id, "stage": name, **owner_tags()})
        summary = root / METRICS_DIR / f"{name}.json"
        values = flatten(read_json(summary)) if summary.is_file() else {}
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items() if is_number(v)]
        metrics += curve_metrics(read_curve(curve), now)
        section = params.get(name)
        child_params = [Param(f"{name}.{k}", param_value(v)) for k, v in flatten(section).items()] if isinstance(section, dict) else []
        log_batched(client, child.info.run_id, metrics=metrics, params=child_params)
        datasets = training_datasets(lock, name)
        if datasets:
            client.log_inputs(child.info.run_id, datasets=datasets)
        client.log_artifact(child.info.run_id, str(curve), "curves")
        client.set_terminated(child.info.run_id)
        names.append(name)
    return names


@contextlib.contextmanager
def pipeline_run(root: Path, params: dict[str, Any], experiment: str) -> Iterator[mlflow.ActiveRun]:
    """Start the parent run of this pipeline run, log everything in the module docstring, and yield it
    active (the register stage logs the model into it); a failure inside marks the run FAILED."""
    root = Path(root)
    experiment_id = setup_experiment(experiment, root)
    client = MlflowClient()
    metrics = read_metrics(root / METRICS_DIR)
    lock = read_lock(root / DVC_LOCK)
    hashes = dvc_hashes(root / DVC_LOCK, lock)
    tags = {"dvc.exp_name": os.environ.get(ENV_EXP_NAME, ""), "dvc.baseline_rev": os.environ.get(ENV_BASELINE_REV, "")}
    commit = git_commit(root)
    if commit:
        tags.update({"git.commit": commit, GIT_COMMIT_TAG: commit})
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name(root), tags=owner_tags()) as run:
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        log_batched(
            client, run_id,
            metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
            params=[Param(k, param_value(v)) for k, v in flatten(params).items()]
            + [Param(k, v) for k, v in hashes.items()],
            tags=[RunTag(k, v) for k, v in tags.items() if v],
        )
        datasets = pipeline_datasets(lock)
        if datasets:
            client.log_inputs(run_id, datasets=datasets)
        if (root / PLOTS_DIR).is_dir():  # sample grids, histograms, curves and confusion tables
            client.log_artifacts(run_id, str(root / PLOTS_DIR), PLOTS_ARTIFACTS)
        for path in (root / PARAMS_FILE, root / DVC_LOCK):
            if path.is_file():
                client.log_artifact(run_id, str(path), "pipeline")
        log_training_children(client, experiment_id, run_id, root, params, lock)
        yield run
