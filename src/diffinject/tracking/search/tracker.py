"""MLflow side of the study: the study's run (`search-<study>`, shared by every worker) and one child
run per trial, logged with the client API (not optuna-integration's deprecated callback)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from diffinject.tracking import runs, store
from diffinject.tracking.registry import RegistryConfig
from diffinject.tracking.search.config import SECTION, SearchConfig
from diffinject.tracking.search.space import SPACE


class StudyTracker:
    """The study's MLflow run (`search-<study>`, shared by every worker) and one child run per trial."""

    def __init__(self, experiment_id: str, study_name: str, label: str, root: Path):
        self.client = MlflowClient()
        self.experiment_id = experiment_id
        self.study_name = study_name
        # under the store lock: two workers starting at once must find one study run, not create two
        with store.store_lock(root):
            found = self.client.search_runs(
                [experiment_id], max_results=1,
                filter_string=f"tags.`optuna.study` = '{study_name}' and tags.`optuna.storage` = '{label}'",
            )
            if found:
                self.run_id = found[0].info.run_id
                if found[0].info.status != RunStatus.to_string(RunStatus.RUNNING):
                    self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            else:
                run = self.client.create_run(experiment_id, run_name=f"search-{study_name}",
                                             tags={"optuna.study": study_name, "optuna.storage": label,
                                                   "diffinject.kind": "search"})
                self.run_id = run.info.run_id

    def describe(self, cfg: SearchConfig, reg: RegistryConfig) -> None:
        """The search settings as tags of the study's run (tags, not params: a later worker may differ)."""
        settings = {f"{SECTION}.{k}": getattr(cfg, k) for k in ("sampler", "pruner", *SPACE)}
        settings.update({"registry.metric": reg.metric, "registry.direction": reg.direction})
        self.client.log_batch(self.run_id, tags=[RunTag(k, runs.param_value(v)) for k, v in settings.items()])

    def start_trial(self, number: int, values: dict[str, float], worker: int) -> str:
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{number}", tags={
            runs.PARENT_RUN_ID: self.run_id, "optuna.study": self.study_name, "optuna.trial": str(number),
            "diffinject.worker": str(worker), **runs.owner_tags(),
        })
        runs.log_batched(self.client, run.info.run_id, params=[Param(k, runs.param_value(v)) for k, v in values.items()])
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        runs.log_batched(self.client, run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])

    def log_curve(self, run_id: str, rows: list[dict[str, float]]) -> None:
        runs.log_batched(self.client, run_id, metrics=runs.curve_metrics(rows, int(time.time() * 1000)))

    def end_trial(self, run_id: str, state: str, error: str | None = None) -> None:
        tags = [RunTag("optuna.state", state)] + ([RunTag("error", error)] if error else [])
        runs.log_batched(self.client, run_id, tags=tags)
        status = {"COMPLETE": RunStatus.FINISHED, "PRUNED": RunStatus.KILLED}.get(state, RunStatus.FAILED)
        self.client.set_terminated(run_id, RunStatus.to_string(status))

    def finish(self, summary: dict[str, Any], best_params: dict[str, Any], plots: list[Path]) -> None:
        counts = {f"n_trials.{k}": float(v) for k, v in summary["n_trials"].items()}
        metrics = {**counts, "best_value": summary["best_value"], "best_trial": float(summary["best_trial"])}
        self.log_metrics(self.run_id, metrics)
        self.client.log_batch(self.run_id, tags=[RunTag(f"best.{k}", runs.param_value(v)) for k, v in best_params.items()])
        for plot in plots:
            self.client.log_artifact(self.run_id, str(plot), "plots")
        self.client.set_terminated(self.run_id)
