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

Only numbers are metrics (booleans and strings are skipped). dvc.lock is read as YAML: this package
does not import DVC.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import mlflow
import yaml
from sqlalchemy.exc import SQLAlchemyError
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from diffinject.errors import DiffinjectError, first_line
from diffinject.tracking import store

METRICS_DIR = Path("metrics")
PLOTS_DIR = METRICS_DIR / "plots"
CURVES_DIR = PLOTS_DIR / "train"
DVC_LOCK = Path("dvc.lock")
PARAMS_FILE = Path("params.yaml")
# metrics/eval.json is the metrics contract (DESIGN.md): its paths are the metric keys themselves.
EVAL_FILE = "eval.json"
# Files in metrics/ that describe something else than this pipeline run: the registry's own record
# (written after logging) and a search study's summary (logged in the study's run).
NOT_PIPELINE_METRICS = ("register.json", "search.json")
# dvc.lock outs under these prefixes are logged as values and artifacts, not as data hashes.
NOT_DATA_PREFIXES = ("metrics/",)
PLOTS_ARTIFACTS = "plots"
# DVC-versioned data sets are MLflow dataset inputs (the UI's Datasets column): outs/deps under this prefix.
DATA_PREFIX = "data/"
DATASET_SOURCE_TYPE = "dvc"
DATASET_CONTEXT = "mlflow.data.context"  # MLflow's input tag shown next to the dataset
CURVE_STEP = "epoch"
ENV_EXP_NAME = "DVC_EXP_NAME"
ENV_BASELINE_REV = "DVC_EXP_BASELINE_REV"
SHORT_COMMIT = 7
PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's tag that nests a run under another
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # shown by the MLflow UI
# MLflow 3's UI opens an experiment of this kind on its training runs (not the GenAI traces overview).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# Which process owns a run: a run left RUNNING by a process that is gone (killed) is marked FAILED by
# the next process on that host that opens the store (mark_stale_runs).
OWNER_HOST, OWNER_PID = "diffinject.host", "diffinject.pid"
# MLflow's log_batch limits per call (mlflow.utils.validation).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100


class MissingMetricError(DiffinjectError):
    """A metric the registry or the search needs was never written: stop, never compare or optimise None."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def param_value(value: Any) -> str:
    """A params.yaml value as MLflow stores it (a string): YAML spelling for null, bools and lists; a
    URL's password (search.storage) is never logged."""
    return store.redacted(value) if isinstance(value, str) else json.dumps(value)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DiffinjectError(f"{path}: not valid JSON ({exc})") from exc


def file_metrics(path: Path) -> dict[str, float]:
    """The numeric leaves of one metrics file, under the key scheme of the module docstring."""
    prefix = "" if path.name == EVAL_FILE else f"{path.stem}/"
    flat = flatten(read_json(path))
    return {f"{prefix}{key}": float(value) for key, value in flat.items() if is_number(value)}


def read_metrics(metrics_dir: Path) -> dict[str, float]:
    """Every number of every metrics/*.json of this pipeline run."""
    out: dict[str, float] = {}
    for path in sorted(metrics_dir.glob("*.json")):
        if path.name not in NOT_PIPELINE_METRICS:
            out.update(file_metrics(path))
    return out


def require_metric(metrics: dict[str, float], name: str, metrics_dir: Path, param: str) -> float:
    """metrics[name], or a one-line error: a missing metric is never optimised or compared as None."""
    if name not in metrics:
        model = name.split(".")[0]
        known = sorted(k for k in metrics if k.startswith(f"{model}."))
        raise MissingMetricError(
            f"params '{param}': metric {name!r} not found in {metrics_dir}/{EVAL_FILE} "
            f"(has {', '.join(known[:8]) or 'no metrics of that model'}; run the evaluate stage first)"
        )
    return metrics[name]


def read_lock(lock_path: Path) -> dict[str, Any]:
    """The `stages` of dvc.lock; a pipeline run reads it once for its hashes and data sets."""
    if not lock_path.is_file():
        raise DiffinjectError(f"{lock_path}: not found (run the pipeline with `dvc repro` so it records its data hashes)")
    try:
        return (yaml.safe_load(lock_path.read_text()) or {}).get("stages") or {}
    except yaml.YAMLError as exc:
        raise DiffinjectError(f"{lock_path}: not valid YAML ({first_line(exc)})") from exc


def dvc_hashes(lock_path: Path, stages: dict[str, Any] | None = None) -> dict[str, str]:
    """`dvc.<path>.md5` of every out in dvc.lock except metrics and plots (module docstring); `stages`:
    the lock as read_lock already read it."""
    hashes: dict[str, str] = {}
    for stage_name, stage in (read_lock(lock_path) if stages is None else stages).items():
        for out in stage.get("outs") or []:
            path = out.get("path", "")
            if path.startswith(NOT_DATA_PREFIXES):
                continue
            if "md5" not in out:
                raise DiffinjectError(f"{lock_path}: stage {stage_name!r} out {path!r} has no md5")
            hashes[f"dvc.{path}.md5"] = out["md5"]
    return hashes


def _dataset(path: str, md5: str, context: str) -> DatasetInput:
    return DatasetInput(Dataset(name=path, digest=md5, source_type=DATASET_SOURCE_TYPE, source=path),
                        tags=[InputTag(DATASET_CONTEXT, context)])


def pipeline_datasets(stages: dict[str, Any]) -> list[DatasetInput]:
    """Every data set dvc.lock versions (outs under data/), its context the stage that wrote it."""
    return [_dataset(out["path"], out["md5"], name) for name, stage in stages.items()
            for out in stage.get("outs") or [] if str(out.get("path", "")).startswith(DATA_PREFIX) and "md5" in out]


def training_datasets(stages: dict[str, Any], model: str) -> list[DatasetInput]:
    """The data sets (deps under data/) of the dvc.lock stage whose out is models/<model>."""
    for stage in stages.values():
        if any(out.get("path") == f"models/{model}" for out in stage.get("outs") or []):
            return [_dataset(dep["path"], dep["md5"], "training") for dep in stage.get("deps") or []
                    if str(dep.get("path", "")).startswith(DATA_PREFIX) and "md5" in dep]
    return []


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


def read_curve(path: Path) -> list[dict[str, float]]:
    """Rows of a metrics/plots/train/<name>.csv (one per epoch, with an `epoch` column)."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and CURVE_STEP not in rows[0]:
        raise DiffinjectError(f"{path}: no {CURVE_STEP!r} column (columns: {', '.join(rows[0])})")
    out = []
    for i, row in enumerate(rows):
        try:
            out.append({k: float(v) for k, v in row.items() if v not in ("", None)})
        except ValueError as exc:
            raise DiffinjectError(f"{path}: row {i + 2} is not numeric ({exc})") from exc
    return out


def curve_metrics(rows: list[dict[str, float]], timestamp_ms: int) -> list[Metric]:
    return [Metric(key, value, timestamp_ms, int(row[CURVE_STEP]))
            for row in rows for key, value in row.items() if key != CURVE_STEP]


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


def owner_tags() -> dict[str, str]:
    """Tags of every run this process creates and ends itself (not a study's shared run)."""
    return {OWNER_HOST: socket.gethostname(), OWNER_PID: str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def owner_gone(tags: Mapping[str, str]) -> bool:
    """Whether the process `tags` (owner_tags) name ran on this host, is not this one and no longer
    exists. Another host's process cannot be asked: it is never called gone."""
    pid = str(tags.get(OWNER_PID, ""))
    return (tags.get(OWNER_HOST) == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid()
            and not _alive(int(pid)))


def mark_stale_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """Mark FAILED the runs left RUNNING by a process of this host that no longer exists (a SIGKILL, a
    power cut): without it they stay RUNNING in the UI for ever. Other hosts' runs are theirs to sweep."""
    host = socket.gethostname()
    stale = []
    for run in client.search_runs([experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`{OWNER_HOST}` = '{host}'"):
        if owner_gone(run.data.tags):
            pid = run.data.tags[OWNER_PID]
            client.set_tag(run.info.run_id, "diffinject.failure", f"process {pid} on {host} ended without closing the run")
            client.set_terminated(run.info.run_id, status="FAILED")
            stale.append(run.info.run_id)
    if stale:
        print(f"mlflow: marked {len(stale)} run(s) FAILED, left RUNNING by a process that is gone: {', '.join(stale)}")
    return stale


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
