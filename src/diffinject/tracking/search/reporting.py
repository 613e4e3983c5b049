"""What the study reports. In MLflow: the study's run (`search-<study>`, shared by every worker) and one
child run per trial, logged with the client API (not optuna-integration's deprecated callback). Once this
worker's trials are done: metrics/search.json, params.best.yaml, the plots (optimisation history,
intermediate values and parameter importances, as PNGs), and the same on the study's run."""

from __future__ import annotations

import shlex
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from diffinject.errors import DiffinjectError
from diffinject.fsutil import atomic_file, write_json
from diffinject.tracking import store
from diffinject.tracking.metrics_files import curve_metrics
from diffinject.tracking.registry_config import RegistryConfig
from diffinject.tracking.runs import PARENT_RUN_ID, log_batched, param_value
from diffinject.tracking.search.config import SECTION, SPACE, VALUES_ATTR, SearchConfig, overlay
from diffinject.tracking.stale_runs import owner_tags

SEARCH_JSON = Path("metrics/search.json")
BEST_PARAMS = Path("params.best.yaml")
PLOTS = Path("metrics/plots/search")
MIN_TRIALS_FOR_IMPORTANCE = 2  # fANOVA needs two complete trials


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
        self.client.log_batch(self.run_id, tags=[RunTag(k, param_value(v)) for k, v in settings.items()])

    def start_trial(self, number: int, values: dict[str, float], worker: int) -> str:
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{number}", tags={
            PARENT_RUN_ID: self.run_id, "optuna.study": self.study_name, "optuna.trial": str(number),
            "diffinject.worker": str(worker), **owner_tags(),
        })
        log_batched(self.client, run.info.run_id, params=[Param(k, param_value(v)) for k, v in values.items()])
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        log_batched(self.client, run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])

    def log_curve(self, run_id: str, rows: list[dict[str, float]]) -> None:
        log_batched(self.client, run_id, metrics=curve_metrics(rows, int(time.time() * 1000)))

    def end_trial(self, run_id: str, state: str, error: str | None = None) -> None:
        tags = [RunTag("optuna.state", state)] + ([RunTag("error", error)] if error else [])
        log_batched(self.client, run_id, tags=tags)
        status = {"COMPLETE": RunStatus.FINISHED, "PRUNED": RunStatus.KILLED}.get(state, RunStatus.FAILED)
        self.client.set_terminated(run_id, RunStatus.to_string(status))

    def finish(self, summary: dict[str, Any], best_params: dict[str, Any], plots: list[Path]) -> None:
        counts = {f"n_trials.{k}": float(v) for k, v in summary["n_trials"].items()}
        metrics = {**counts, "best_value": summary["best_value"], "best_trial": float(summary["best_trial"])}
        self.log_metrics(self.run_id, metrics)
        self.client.log_batch(self.run_id, tags=[RunTag(f"best.{k}", param_value(v)) for k, v in best_params.items()])
        for plot in plots:
            self.client.log_artifact(self.run_id, str(plot), "plots")
        self.client.set_terminated(self.run_id)


def save_plots(study: optuna.Study, out_dir: Path, n_complete: int) -> list[Path]:
    """Optimisation history, intermediate values (the reported curves) and, from two complete trials,
    parameter importances, as PNGs in `out_dir`."""
    # imported here: matplotlib costs an import only a finishing worker pays, and needs Agg set first
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    makers = {"history": ovm.plot_optimization_history, "intermediate_values": ovm.plot_intermediate_values}
    if n_complete >= MIN_TRIALS_FOR_IMPORTANCE:
        makers["importances"] = ovm.plot_param_importances
    else:
        print(f"search: no parameter importance plot ({n_complete} complete trial(s), needs {MIN_TRIALS_FOR_IMPORTANCE})")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, maker in makers.items():
            ax = maker(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            path = out_dir / f"{name}.png"
            with atomic_file(path) as tmp:
                fig.savefig(tmp, format="png", dpi=100)
            plt.close(fig)
            paths.append(path)
    return paths


def _count(study: optuna.Study) -> dict[str, int]:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    T = optuna.trial.TrialState
    return {name.lower(): states.count(state) for name, state in
            (("COMPLETE", T.COMPLETE), ("FAILED", T.FAIL), ("PRUNED", T.PRUNED), ("RUNNING", T.RUNNING))}


def _value(value: Any) -> str:
    """A params value as `dvc exp run -S` takes it (YAML flow style)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def write_best_params(path: Path, params: dict[str, Any], best: dict[str, Any], study_name: str, value: float,
                      metric: str) -> None:
    """params.yaml with the best trial's values, and the `dvc exp run` line that applies them."""
    sets = " ".join(f"-S {shlex.quote(f'{k}={_value(v)}')}" for k, v in best.items())
    header = (f"# Best trial of Optuna study {study_name!r}: {metric} = {value:.4f}.\n"
              f"# Apply it to the pipeline: dvc exp run {sets}\n")
    with atomic_file(path) as tmp:
        tmp.write_text(header + yaml.safe_dump(overlay(params, best), sort_keys=False))


def summarise(study: optuna.Study, params: dict[str, Any], root: Path, cfg: SearchConfig, reg: RegistryConfig,
              tracker: StudyTracker, label: str, worker: int, seconds: float) -> dict[str, Any]:
    """Summarise the whole study (every worker's trials so far), write the outputs, return search.json."""
    counts = _count(study)
    if counts["complete"] == 0:
        raise DiffinjectError(
            f"search: study {cfg.study_name!r} has no complete trial ({counts['failed']} failed, {counts['pruned']} pruned); "
            "the failed trials' errors are in the log above and in their MLflow runs (tag error)"
        )
    best = study.best_trial
    values = best.user_attrs.get(VALUES_ATTR) or dict(best.params)  # a setting's name expanded to its keys
    summary = {
        "study": cfg.study_name, "storage": label, "metric": reg.metric, "direction": reg.direction,
        "best_value": best.value, "best_trial": best.number, "best_params": values,
        "n_trials": counts, "worker": {"index": worker, "seconds": round(seconds, 1)},
    }
    write_json(root / SEARCH_JSON, summary)
    write_best_params(root / BEST_PARAMS, params, values, cfg.study_name, best.value, reg.metric)
    plots = save_plots(study, root / PLOTS, counts["complete"])
    tracker.finish(summary, values, plots)
    print(f"search: best {reg.metric} = {best.value:.4f} (trial {best.number}) with "
          + ", ".join(f"{k}={_value(v)}" for k, v in values.items())
          + f"; trials {counts}; {seconds:.0f} s -> {root / SEARCH_JSON}, {root / BEST_PARAMS}")
    return summary
