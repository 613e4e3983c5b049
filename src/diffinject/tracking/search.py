"""Optuna search over `injection.h_gamma`, `debiased.bias_conflict_ratio` and `debiased.lr` (ranges,
sampler, trials and seed in `search.*`), optimising the validation metric `registry.metric` in
`registry.direction` (never a test metric: `RegistryConfig.check`).

- Storage: `search.storage` / `--storage`, else `sqlite:///<main repo>/mlruns/optuna.db` (SQLite waits
  `SQLITE_TIMEOUT_S` on a locked file, so workers on one machine can share it); any RDB URL
  (PostgreSQL) for workers on several machines. `load_if_exists`, so every worker started with the same
  `search.study_name` joins one study; a worker's sampler seed is the search seed plus its join index
  (`diffinject.workers` study attribute), so two workers do not draw the same random start-up trials.
  Heartbeats mark the trials of a killed worker as failed.
- Each trial runs the injected `pipeline(params, root, curve)` in its own folder
  `mlruns/search/<study>/trial-<n>/` (inputs linked from the repository, outputs private), reads
  `registry.metric` from the folder's metrics, and is an MLflow child run of the study's run
  (`search-<study>`; logged here with the client API, not optuna-integration's deprecated callback).
- A trial whose pipeline raises one of `TRIAL_FAILURES` is recorded FAIL (MLflow: FAILED, with the error)
  and the study goes on. A missing metric is not a trial failure: it stops the search with an error.
- Pruning: the pipeline gives its training `ValidationCurve.lightning_callback`, which reports each
  epoch's (running best) validation accuracy as it ends; training stops at the first epoch the pruner
  rejects, and `ValidationCurve.report` then marks the trial PRUNED before evaluation.
- At the end: metrics/search.json, params.best.yaml, and history / importance / curve plots (also
  artifacts of the study's run).
"""

from __future__ import annotations

import copy
import math
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import lightning
import optuna
import yaml
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url

from diffinject.config import check_at_least, section, seed_of
from diffinject.errors import DiffinjectError
from diffinject.fsutil import atomic_file, write_json
from diffinject.tracking import runs, store
from diffinject.tracking.registry import RegistryConfig
from diffinject.tracking.runs import MissingMetricError

SECTION = "search"
# search.<key> -> (params key a trial sets, sampled on a log scale)
SPACE: dict[str, tuple[str, bool]] = {
    "h_gamma": ("injection.h_gamma", False),
    "bias_conflict_ratio": ("debiased.bias_conflict_ratio", False),
    "lr": ("debiased.lr", True),
}
TRIALS_DIR = "search"  # mlruns/search/<study>/trial-<n>/
SEARCH_JSON = Path("metrics/search.json")
BEST_PARAMS = Path("params.best.yaml")
PLOTS = Path("metrics/plots/search")
# Exceptions of a trial's pipeline that fail the trial, not the study (bad sampled values, diverging
# training, a full disk). DiffinjectError covers the stages' own checks.
TRIAL_FAILURES: tuple[type[BaseException], ...] = (DiffinjectError, RuntimeError, ValueError, ArithmeticError, OSError)
WORKERS_ATTR = "diffinject.workers"
METRIC_ATTR = "diffinject.metric"
HEARTBEAT_INTERVAL_S = 60  # a running trial's heartbeat; one silent for GRACE_PERIOD_S is marked FAIL
GRACE_PERIOD_S = 180
MIN_TRIALS_FOR_IMPORTANCE = 2  # fANOVA needs two complete trials
_STUDY_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # also a folder name and an MLflow filter value


class TrialFailed(Exception):
    """A trial's pipeline raised one of TRIAL_FAILURES; Optuna records the trial FAIL and goes on."""


@dataclass
class SearchConfig:
    """`search.*`."""

    study_name: str = "diffinject"  # workers with the same name (and storage) share one study
    n_trials: int = 20  # per process (`--n-trials`)
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int | None = None  # sampler seed; null: the top-level `seed`
    storage: str | None = None  # Optuna storage URL; null: sqlite:///<repo>/mlruns/optuna.db
    h_gamma: list[float] = field(default_factory=lambda: [0.1, 0.9])
    bias_conflict_ratio: list[float] = field(default_factory=lambda: [0.05, 0.5])
    lr: list[float] = field(default_factory=lambda: [1e-4, 1e-2])  # log scale
    pruner: Literal["median", "none"] = "median"
    pruner_startup_trials: int = 3  # complete trials before the median pruner prunes any
    pruner_warmup_epochs: int = 5  # epochs of a trial's curve before it may be pruned (early epochs are noisy)
    keep_trial_dirs: bool = False  # keep mlruns/search/<study>/trial-<n>/ (synthetic set, model) after a trial

    def check(self) -> None:
        if not _STUDY_NAME.match(self.study_name):
            raise DiffinjectError(f"params '{SECTION}.study_name': got {self.study_name!r}, expected letters, digits, _ . -")
        if self.n_trials < 1:
            raise DiffinjectError(f"params '{SECTION}.n_trials' (or --n-trials): got {self.n_trials}, expected >= 1")
        check_at_least(self, SECTION, 0, "pruner_warmup_epochs", "pruner_startup_trials")
        for key, (_, log) in SPACE.items():
            bounds = getattr(self, key)
            if len(bounds) != 2 or not bounds[0] < bounds[1]:
                raise DiffinjectError(f"params '{SECTION}.{key}': got {bounds}, expected [low, high] with low < high")
            if log and bounds[0] <= 0:
                raise DiffinjectError(f"params '{SECTION}.{key}': got {bounds}, a log-scale range needs low > 0")
        if not (0 <= self.h_gamma[0] and self.h_gamma[1] <= 1):
            raise DiffinjectError(f"params '{SECTION}.h_gamma': got {self.h_gamma}, expected within [0, 1] (a slerp weight)")
        if self.bias_conflict_ratio[0] < 0:
            raise DiffinjectError(f"params '{SECTION}.bias_conflict_ratio': got {self.bias_conflict_ratio}, expected >= 0")


def set_dotted(params: dict[str, Any], key: str, value: Any) -> None:
    node = params
    *parents, leaf = key.split(".")
    for name in parents:
        node = node.setdefault(name, {})
        if not isinstance(node, dict):
            raise DiffinjectError(f"params '{key}': {name!r} is not a section")
    node[leaf] = value


def overlay(params: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `params` with the dotted `values` set."""
    out = copy.deepcopy(params)
    for key, value in values.items():
        set_dotted(out, key, value)
    return out


def suggest(trial: optuna.Trial, cfg: SearchConfig) -> dict[str, float]:
    """The trial's values, by dotted params key."""
    return {target: trial.suggest_float(target, *getattr(cfg, key), log=log) for key, (target, log) in SPACE.items()}


class ValidationCurve:
    """Reports a trial's validation curve to Optuna and MLflow and prunes the trial when the pruner finds
    it hopeless. During training, `lightning_callback` reports each epoch as it ends and stops the
    training at the first epoch the pruner rejects; `report(csv)` then logs the curve the training wrote
    and raises TrialPruned (a pipeline without the callback gets its whole curve reported there). With
    `running_best`, epoch e reports the best value up to e (the epoch a `select: best` training keeps),
    so a late dip does not prune a good trial."""

    def __init__(self, trial: optuna.Trial, column: str, running_best: bool, log: Callable[[list[dict[str, float]]], None]):
        self.trial, self.column, self.running_best, self.log = trial, column, running_best, log
        self.maximize = trial.study.direction == optuna.study.StudyDirection.MAXIMIZE
        self._best: float | None = None
        self._reported: set[int] = set()
        self.pruned_reason: str | None = None

    def add(self, epoch: int, value: float) -> bool:
        """Report one epoch's value; True when the trial should stop (the pruner rejected it)."""
        if self.running_best and self._best is not None:
            value = max(self._best, value) if self.maximize else min(self._best, value)
        self._best = value
        if epoch not in self._reported:
            self.trial.report(value, epoch)
            self._reported.add(epoch)
        if self.pruned_reason is None and self.trial.should_prune():
            self.pruned_reason = f"{self.column} {value:.4f} at epoch {epoch} is below the pruner's threshold"
        return self.pruned_reason is not None

    def lightning_callback(self, monitor: str) -> lightning.Callback:
        """A callback reporting the logged metric `monitor` after every validation epoch."""
        return PruneDuringTraining(self, monitor)

    def report(self, curve_csv: Path) -> None:
        if not curve_csv.is_file():
            raise MissingMetricError(f"{curve_csv}: validation curve not written by the trial's training")
        rows = runs.read_curve(curve_csv)
        if not rows or self.column not in rows[0]:
            have = ", ".join(rows[0]) if rows else "no rows"
            raise MissingMetricError(f"{curve_csv}: no column {self.column!r} to prune on (columns: {have})")
        self.log(rows)
        if not self._reported:  # no callback during training: report the whole curve now
            for row in rows:
                self.add(int(row[runs.CURVE_STEP]), row[self.column])
        if self.pruned_reason is not None:
            raise optuna.TrialPruned(self.pruned_reason)


class PruneDuringTraining(lightning.Callback):
    """Stops a trial's training at the first epoch the pruner rejects, so a hopeless trial costs only the
    epochs it took to see that. Rank zero talks to Optuna; the decision is broadcast to every rank."""

    def __init__(self, curve: ValidationCurve, monitor: str):
        self.curve, self.monitor = curve, monitor

    # on_validation_end, like Lightning's EarlyStopping: it runs after the module's on_validation_epoch_end
    # has logged the epoch's metric (callbacks' on_validation_epoch_end run before the module's).
    def on_validation_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        stop = False
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.monitor)
            if value is None:
                have = ", ".join(sorted(trainer.callback_metrics)) or "none"
                raise MissingMetricError(f"validation metric {self.monitor!r} not logged by the training (logged: {have})")
            stop = self.curve.add(trainer.current_epoch + 1, float(value))
        if trainer.strategy.broadcast(stop):
            trainer.should_stop = True


# pipeline(params, trial_root, curve): run the trial's stages in trial_root and call curve.report(csv)
Pipeline = Callable[[dict[str, Any], Path, ValidationCurve], None]


@dataclass
class TrialSetup:
    """What the stage tells the library about its pipeline."""

    pipeline: Pipeline
    required_inputs: tuple[Path, ...]  # linked into every trial folder; missing -> error before the study
    curve_column: str  # the validation-curve column the pruner reads
    optional_inputs: tuple[Path, ...] = ()  # linked when present
    fixed: dict[str, Any] = field(default_factory=dict)  # dotted params every trial sets (not in params.best.yaml)
    running_best: bool = True
    missing_hint: str = "run the pipeline first (dvc repro)"


def link_inputs(source: Path, trial_root: Path, setup: TrialSetup) -> None:
    for rel in setup.required_inputs + setup.optional_inputs:
        src = (source / rel).resolve()
        if not src.exists():
            continue
        (trial_root / rel).parent.mkdir(parents=True, exist_ok=True)
        (trial_root / rel).symlink_to(src, target_is_directory=src.is_dir())


def storage_label(url: str) -> str:
    """The storage URL without its password (it is logged as a tag)."""
    return make_url(url).render_as_string(hide_password=True)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    store.ensure_sqlite_dir(url)
    engine_kwargs = {"connect_args": {"timeout": store.SQLITE_TIMEOUT_S}} if store.sqlite_path(url) else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_INTERVAL_S,
                                          grace_period=GRACE_PERIOD_S)


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise DiffinjectError(f"params '{SECTION}.sampler': got {kind!r}, expected tpe or random")


def make_pruner(cfg: SearchConfig) -> optuna.pruners.BasePruner:
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner_startup_trials, n_warmup_steps=cfg.pruner_warmup_epochs)
    return optuna.pruners.NopPruner()


def join_study(cfg: SearchConfig, url: str, reg: RegistryConfig, seed: int, root: Path) -> tuple[optuna.Study, int]:
    """Open the storage (creating its schema), create or load the study, check it optimises the same
    metric in the same direction, and take a worker index: all under the store lock, so two workers
    started at once do not both create the schema, and get indices 0 and 1."""
    with store.store_lock(root):
        storage = open_storage(url)
        study = optuna.create_study(storage=storage, study_name=cfg.study_name, direction=reg.direction,
                                    load_if_exists=True)
        wanted = optuna.study.StudyDirection.MAXIMIZE if reg.direction == "maximize" else optuna.study.StudyDirection.MINIMIZE
        metric = study.user_attrs.get(METRIC_ATTR, reg.metric)
        if study.direction != wanted or metric != reg.metric:
            raise DiffinjectError(
                f"params '{SECTION}.study_name': study {cfg.study_name!r} already optimises {metric} "
                f"({study.direction.name.lower()}), not {reg.metric} ({reg.direction}); choose another study name"
            )
        worker = int(study.user_attrs.get(WORKERS_ATTR, 0))
        study.set_user_attr(WORKERS_ATTR, worker + 1)
        study.set_user_attr(METRIC_ATTR, reg.metric)
    study = optuna.load_study(study_name=cfg.study_name, storage=storage,
                              sampler=make_sampler(cfg.sampler, seed + worker), pruner=make_pruner(cfg))
    return study, worker


class StudyTracker:
    """The study's MLflow run (`search-<study>`, shared by every worker) and one child run per trial."""

    def __init__(self, experiment_id: str, study_name: str, label: str, root: Path):
        self.client = MlflowClient()
        self.experiment_id = experiment_id
        self.study_name = study_name
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
            "diffinject.worker": str(worker),
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


def _count(study: optuna.Study) -> dict[str, int]:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    T = optuna.trial.TrialState
    return {name.lower(): states.count(state) for name, state in
            (("COMPLETE", T.COMPLETE), ("FAILED", T.FAIL), ("PRUNED", T.PRUNED), ("RUNNING", T.RUNNING))}


def save_plots(study: optuna.Study, out_dir: Path, n_complete: int) -> list[Path]:
    """Optimisation history, intermediate values (the reported curves) and, from two complete trials,
    parameter importances, as PNGs in `out_dir`."""
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


def write_best_params(path: Path, params: dict[str, Any], best: dict[str, Any], study_name: str, value: float,
                      metric: str) -> None:
    """params.yaml with the best trial's values, and the `dvc exp run` line that applies them."""
    sets = " ".join(f"-S {k}={v:.6g}" for k, v in best.items())
    header = (f"# Best trial of Optuna study {study_name!r}: {metric} = {value:.4f}.\n"
              f"# Apply it to the pipeline: dvc exp run {sets}\n")
    with atomic_file(path) as tmp:
        tmp.write_text(header + yaml.safe_dump(overlay(params, best), sort_keys=False))


def run_search(params: dict[str, Any], root: Path, setup: TrialSetup, *, n_trials: int | None = None,
               storage: str | None = None) -> dict[str, Any]:
    """Run this worker's trials, then summarise the whole study (module docstring). Returns search.json."""
    cfg = section(params, SECTION, SearchConfig)
    if n_trials is not None:
        cfg.n_trials = n_trials
    if storage is not None:
        cfg.storage = storage
    cfg.check()
    reg = section(params, "registry", RegistryConfig)
    reg.check()
    root = Path(root)
    missing = [str(root / rel) for rel in setup.required_inputs if not (root / rel).exists()]
    if missing:
        raise DiffinjectError(f"{missing[0]}: search input not found ({setup.missing_hint})")
    seed = cfg.seed if cfg.seed is not None else seed_of(params)
    url = store.optuna_storage_url(cfg.storage, root)
    label = storage_label(url)
    study, worker = join_study(cfg, url, reg, seed, root)
    tracker = StudyTracker(runs.setup_experiment(reg.experiment, root), cfg.study_name, label, root)
    tracker.describe(cfg, reg)
    trials_dir = store.store_dir(root) / TRIALS_DIR / cfg.study_name
    print(f"search: study {cfg.study_name!r} on {label}, worker {worker} (sampler {cfg.sampler}, seed {seed + worker}), "
          f"{cfg.n_trials} trial(s), objective {reg.metric} ({reg.direction})")

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, cfg)
        trial_root = trials_dir / f"trial-{trial.number}"
        shutil.rmtree(trial_root, ignore_errors=True)  # a stale folder of an earlier study with this name
        trial_root.mkdir(parents=True)
        link_inputs(root, trial_root, setup)
        run_id = tracker.start_trial(trial.number, values, worker)
        state, error = "FAIL", None
        try:
            curve = ValidationCurve(trial, setup.curve_column, setup.running_best, lambda rows: tracker.log_curve(run_id, rows))
            setup.pipeline(overlay(params, {**values, **setup.fixed}), trial_root, curve)
            metrics_dir = trial_root / runs.METRICS_DIR
            metrics = runs.read_metrics(metrics_dir)
            value = runs.require_metric(metrics, reg.metric, metrics_dir, "registry.metric")
            tracker.log_metrics(run_id, metrics)
            if math.isnan(value):
                error = f"{reg.metric} is NaN"
                raise TrialFailed(f"trial {trial.number}: {error}")
            state = "COMPLETE"
            return value
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except MissingMetricError:
            raise  # not a trial failure: stop the search
        except TRIAL_FAILURES as exc:
            error = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            raise TrialFailed(f"trial {trial.number}: {error}") from exc
        finally:
            if error:
                trial.set_user_attr("error", error)
            tracker.end_trial(run_id, state, error)
            if not cfg.keep_trial_dirs:
                shutil.rmtree(trial_root, ignore_errors=True)

    start = time.perf_counter()
    study.optimize(objective, n_trials=cfg.n_trials, catch=(TrialFailed,))
    seconds = time.perf_counter() - start
    return summarise(study, params, root, cfg, reg, tracker, label, worker, seconds)


def summarise(study: optuna.Study, params: dict[str, Any], root: Path, cfg: SearchConfig, reg: RegistryConfig,
              tracker: StudyTracker, label: str, worker: int, seconds: float) -> dict[str, Any]:
    counts = _count(study)
    if counts["complete"] == 0:
        raise DiffinjectError(
            f"search: study {cfg.study_name!r} has no complete trial ({counts['failed']} failed, {counts['pruned']} pruned); "
            "the failed trials' errors are in the log above and in their MLflow runs (tag error)"
        )
    best = study.best_trial
    summary = {
        "study": cfg.study_name, "storage": label, "metric": reg.metric, "direction": reg.direction,
        "best_value": best.value, "best_trial": best.number, "best_params": dict(best.params),
        "n_trials": counts, "worker": {"index": worker, "seconds": round(seconds, 1)},
    }
    write_json(root / SEARCH_JSON, summary)
    write_best_params(root / BEST_PARAMS, params, dict(best.params), cfg.study_name, best.value, reg.metric)
    plots = save_plots(study, root / PLOTS, counts["complete"])
    tracker.finish(summary, dict(best.params), plots)
    print(f"search: best {reg.metric} = {best.value:.4f} (trial {best.number}) with "
          + ", ".join(f"{k}={v:.4g}" for k, v in best.params.items())
          + f"; trials {counts}; {seconds:.0f} s -> {root / SEARCH_JSON}, {root / BEST_PARAMS}")
    return summary
