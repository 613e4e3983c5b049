"""The Optuna search with a cheap fake trial pipeline (the real one: one tiny end-to-end trial, slow):
trials recorded in Optuna and MLflow, failures recorded while the study goes on, a missing metric stops
it, pruning from the validation curve, the outputs, and two processes sharing one SQLite study."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from diffinject.errors import DiffinjectError
from diffinject.tracking import metrics_files, search, store
from tests.conftest import REPO, inverted_repo

STATE = optuna.trial.TrialState
SPACE_KEYS = {"injection.h_gamma", "debiased.bias_conflict_ratio", "debiased.lr"}


def objective_of(params: dict) -> float:
    """The fake pipeline's validation accuracy: best at h_gamma 0.6, ratio 0.2."""
    return 1 - (params["injection"]["h_gamma"] - 0.6) ** 2 - (params["debiased"]["bias_conflict_ratio"] - 0.2) ** 2


def write_curve(path: Path, final: float, epochs: int = 3) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", "train_acc", "valid_acc"])
        for e in range(1, epochs + 1):
            writer.writerow([e, final, final * e / epochs])


def fake_pipeline(params: dict, root: Path, curve: search.ValidationCurve) -> None:
    """Stands in for inject -> train_debiased -> evaluate: a curve, then metrics/eval.json."""
    assert (root / "data" / "prepared").is_symlink() and params["debiased"]["pool"] == "trial-pool.parquet"
    value = objective_of(params)
    write_curve(root / "curve.csv", value)
    curve.report(root / "curve.csv")
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "eval.json").write_text(json.dumps({"debiased": {"valid": {"acc": value}}}))
    (root / "evaluated").write_text("")


def setup(pipeline=fake_pipeline) -> search.TrialSetup:
    return search.TrialSetup(pipeline=pipeline, required_inputs=(Path("data/prepared"),), curve_column="valid_acc",
                             fixed={"debiased.pool": "trial-pool.parquet"})


def params(study: str, **keys) -> dict:
    return {"seed": 0, "injection": {"h_gamma": 0.7}, "debiased": {"lr": 1e-3, "bias_conflict_ratio": 0.1, "pool": None},
            "registry": {"metric": "debiased.valid.acc", "candidates": None},
            "search": {"study_name": study, "sampler": "random", "pruner": "none", **keys}}


def repo_root(tmp_path: Path) -> Path:
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    return tmp_path


def trial_runs(study_name: str, client: MlflowClient | None = None) -> list:
    client = client or MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    (parent,) = client.search_runs(experiments, f"tags.`optuna.study` = '{study_name}' and tags.`diffinject.kind` = 'search'")
    return client.search_runs(experiments, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")


def load(study: str, root: Path) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=store.optuna_storage_url(None, root))


def test_trials_are_recorded_and_the_best_is_written(store_root, tmp_path):
    root = repo_root(tmp_path)
    p = params("s-basic", n_trials=5)
    summary = search.run_search(p, root, setup())
    study = load("s-basic", store_root)
    values = [t.value for t in study.trials]
    assert summary["n_trials"] == {"complete": 5, "failed": 0, "pruned": 0, "running": 0}
    assert summary["best_value"] == max(values) and set(summary["best_params"]) == SPACE_KEYS
    assert json.loads((root / "metrics" / "search.json").read_text()) == summary
    best = yaml.safe_load((root / "params.best.yaml").read_text())
    assert best["injection"]["h_gamma"] == summary["best_params"]["injection.h_gamma"]
    assert best["debiased"]["pool"] is None  # trial-only settings are not part of the best params
    assert "# Apply it to the pipeline: dvc exp run -S injection.h_gamma=" in (root / "params.best.yaml").read_text()
    assert {p.name for p in (root / "metrics" / "plots" / "search").iterdir()} == {
        "history.png", "intermediate_values.png", "importances.png"}
    for trial in study.trials:  # every sampled value inside its range, lr on its log range
        lo, hi = p["search"].get("h_gamma", search.SearchConfig().h_gamma)
        assert lo <= trial.params["injection.h_gamma"] <= hi and 1e-4 <= trial.params["debiased.lr"] <= 1e-2
    children = trial_runs("s-basic")
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [0, 1, 2, 3, 4]
    for run in children:
        trial = study.trials[int(run.data.tags["optuna.trial"])]
        assert run.info.status == "FINISHED" and run.data.metrics["debiased.valid.acc"] == trial.value
        assert float(run.data.params["injection.h_gamma"]) == trial.params["injection.h_gamma"]
    assert not list((store_root / "mlruns" / "search" / "s-basic").iterdir())  # trial folders removed


def test_a_failed_trial_is_recorded_and_the_study_goes_on(store_root, tmp_path):
    calls = []

    def flaky(params, root, curve):
        calls.append(1)
        if len(calls) == 2:
            raise DiffinjectError("params 'debiased.lr': diverged")
        if len(calls) == 3:
            raise RuntimeError("CUDA out of memory\nsecond line")
        fake_pipeline(params, root, curve)

    summary = search.run_search(params("s-flaky", n_trials=4), repo_root(tmp_path), setup(flaky))
    assert summary["n_trials"] == {"complete": 2, "failed": 2, "pruned": 0, "running": 0}
    study = load("s-flaky", store_root)
    assert [t.state for t in study.trials] == [STATE.COMPLETE, STATE.FAIL, STATE.FAIL, STATE.COMPLETE]
    assert study.trials[1].user_attrs["error"] == "DiffinjectError: params 'debiased.lr': diverged"
    assert study.trials[2].user_attrs["error"] == "RuntimeError: CUDA out of memory"
    failed = {r.data.tags["optuna.trial"]: r for r in trial_runs("s-flaky") if r.info.status == "FAILED"}
    assert set(failed) == {"1", "2"} and failed["2"].data.tags["error"] == "RuntimeError: CUDA out of memory"


def test_a_nan_metric_fails_the_trial_in_optuna_and_mlflow(store_root, tmp_path):
    def nan_eval(params, root, curve):
        fake_pipeline(params, root, curve)
        (root / "metrics" / "eval.json").write_text('{"debiased": {"valid": {"acc": NaN}}}')

    with pytest.raises(DiffinjectError, match="no complete trial \\(1 failed"):
        search.run_search(params("s-nan", n_trials=1), repo_root(tmp_path), setup(nan_eval))
    (run,) = trial_runs("s-nan")
    assert run.info.status == "FAILED" and run.data.tags["error"] == "debiased.valid.acc is NaN"


def test_a_missing_metric_stops_the_search_loudly(store_root, tmp_path):
    def forgets_eval(params, root, curve):
        write_curve(root / "curve.csv", 0.5)
        curve.report(root / "curve.csv")

    root = repo_root(tmp_path)
    with pytest.raises(metrics_files.MissingMetricError, match="'debiased.valid.acc' not found"):
        search.run_search(params("s-missing", n_trials=3), root, setup(forgets_eval))
    assert [t.state for t in load("s-missing", store_root).trials] == [STATE.FAIL]  # stopped at the first
    assert not (root / "metrics" / "search.json").exists()


def test_a_curve_without_the_pruning_column_stops_the_search(store_root, tmp_path):
    def bad_curve(params, root, curve):
        (root / "curve.csv").write_text("epoch,valid/acc\n1,0.5\n")
        curve.report(root / "curve.csv")

    with pytest.raises(metrics_files.MissingMetricError, match="no column 'valid_acc' to prune on"):
        search.run_search(params("s-badcurve", n_trials=2), repo_root(tmp_path), setup(bad_curve))


def test_a_hopeless_trial_is_pruned_before_evaluation(store_root, tmp_path):
    url = store.optuna_storage_url(None, store_root)
    storage = search.open_storage(url)
    study = optuna.create_study(storage=storage, study_name="s-prune", direction="maximize")
    for h_gamma in (0.6, 0.5, 0.1):  # two good trials, then one whose curve is below their median
        study.enqueue_trial({"injection.h_gamma": h_gamma, "debiased.bias_conflict_ratio": 0.2, "debiased.lr": 1e-3})
    root = repo_root(tmp_path)
    summary = search.run_search(params("s-prune", n_trials=3, pruner="median", pruner_startup_trials=2, pruner_warmup_epochs=0,
                                       keep_trial_dirs=True),
                                root, setup())
    trials = load("s-prune", store_root).trials
    assert [t.state for t in trials] == [STATE.COMPLETE, STATE.COMPLETE, STATE.PRUNED]
    assert trials[2].intermediate_values == pytest.approx({e: objective_of(
        {"injection": {"h_gamma": 0.1}, "debiased": {"bias_conflict_ratio": 0.2}}) * e / 3 for e in (1, 2, 3)})
    trial_dirs = store_root / "mlruns" / "search" / "s-prune"
    assert (trial_dirs / "trial-1" / "evaluated").exists() and not (trial_dirs / "trial-2" / "evaluated").exists()
    assert summary["n_trials"]["pruned"] == 1
    pruned = [r for r in trial_runs("s-prune") if r.data.tags["optuna.trial"] == "2"][0]
    assert pruned.info.status == "KILLED" and pruned.data.tags["optuna.state"] == "PRUNED"


@pytest.mark.parametrize("running_best, reported", [(True, {1: 0.8, 2: 0.8, 3: 0.9}), (False, {1: 0.8, 2: 0.3, 3: 0.9})])
def test_the_curve_reports_the_running_best_so_a_late_dip_does_not_prune(tmp_path, running_best, reported):
    (tmp_path / "c.csv").write_text("epoch,valid/acc\n1,0.8\n2,0.3\n3,0.9\n")
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    logged = []
    search.ValidationCurve(study.ask(), "valid/acc", running_best, logged.append).report(tmp_path / "c.csv")
    assert study.trials[0].intermediate_values == reported
    assert [r["valid/acc"] for r in logged[0]] == [0.8, 0.3, 0.9]  # MLflow gets the raw curve


def test_no_complete_trial_is_an_error(store_root, tmp_path):
    def always_fails(params, root, curve):
        raise ValueError("bad")

    with pytest.raises(DiffinjectError, match="has no complete trial \\(2 failed, 0 pruned\\)"):
        search.run_search(params("s-allfail", n_trials=2), repo_root(tmp_path), setup(always_fails))


@pytest.mark.parametrize("keys, match", [
    ({"h_gamma": [0.9, 0.1]}, r"'search.h_gamma': got \[0.9, 0.1\], expected \[low, high\]"),
    ({"lr": [0, 0.1]}, "a log-scale range needs low > 0"),
    ({"h_gamma": [0.1, 1.5]}, "within \\[0, 1\\]"),
    ({"study_name": "a b"}, "'search.study_name'"),
    ({"sampler": "grid"}, "'search.sampler': got 'grid'"),
])
def test_bad_search_params_name_the_key(tmp_path, keys, match):
    with pytest.raises(DiffinjectError, match=match):
        search.run_search(params("s-bad", **keys), repo_root(tmp_path), setup())


def test_the_search_never_optimises_a_test_metric(tmp_path):
    p = params("s-test")
    p["registry"]["metric"] = "debiased.test.acc"
    with pytest.raises(DiffinjectError, match="is on the test split"):
        search.run_search(p, repo_root(tmp_path), setup())


def test_missing_inputs_fail_before_the_study(tmp_path):
    with pytest.raises(DiffinjectError, match="data/prepared: search input not found"):
        search.run_search(params("s-noinput"), tmp_path, setup())


def test_a_study_of_another_metric_is_not_joined(store_root, tmp_path):
    search.run_search(params("s-metric", n_trials=1), repo_root(tmp_path / "a"), setup())
    p = params("s-metric", n_trials=1)
    p["registry"].update(metric="debiased.valid.dp_gap", direction="minimize", use_bias_labels=True)
    with pytest.raises(DiffinjectError, match="already optimises debiased.valid.acc \\(maximize\\)"):
        search.run_search(p, repo_root(tmp_path / "b"), setup())


HANDSHAKE_TIMEOUT_S = 120  # generous: under load a worker's imports alone can take tens of seconds


class HandshakeTimeout(Exception):
    """Not one of search.TRIAL_FAILURES: it stops the worker (a non-zero exit the test reports), where a
    trial failure would only fail that trial."""


def handshake(folder: Path, step: str, index: int) -> None:
    """A two-worker file barrier: say worker `index` has reached `step`, then wait until the other has."""
    (folder / f"{step}.{index}").touch()
    other = folder / f"{step}.{1 - index}"
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
    while not other.exists():
        if time.monotonic() > deadline:
            raise HandshakeTimeout(f"worker {index}: worker {1 - index} did not reach {step!r} within "
                                   f"{HANDSHAKE_TIMEOUT_S} s, so the two workers' trials did not run at the same time")
        time.sleep(0.05)  # polling a file, not a guess of how long the other worker takes


def worker(root: str, n_trials: str, handshakes: str, index: int) -> None:
    """Entry point of one search process in the two-process test. The j-th trial of each worker waits
    inside its pipeline for the other's j-th trial, looks at the shared storage while both are running
    (written to seen-<index>.jsonl), and ends only once the other has looked too."""
    folder = Path(handshakes)
    handshake(folder, "started", index)  # both open the empty store at once: schema and study creation race
    looked: list[int] = []  # this worker's trials so far

    def paired_pipeline(params: dict, root: Path, curve: search.ValidationCurve) -> None:
        j = len(looked)
        handshake(folder, f"trial{j}-entered", index)
        running = sorted(t.number for t in curve.trial.study.get_trials(deepcopy=False, states=(STATE.RUNNING,)))
        with (folder / f"seen-{index}.jsonl").open("a") as fh:
            fh.write(json.dumps({"trial": curve.trial.number, "running": running}) + "\n")
        looked.append(curve.trial.number)
        handshake(folder, f"trial{j}-looked", index)  # neither trial ends before both workers have looked
        fake_pipeline(params, root, curve)

    search.run_search(params("s-two", n_trials=int(n_trials)), Path(root), setup(paired_pipeline))


@pytest.mark.slow
def test_two_processes_on_one_sqlite_study_record_every_trial_once(tmp_path, monkeypatch):
    k = 3
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # this test's store, also for the checks below
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exports it
    env = dict(os.environ, DVC_ROOT=str(tmp_path), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = []
    folder = tmp_path / "handshake"
    folder.mkdir()
    for i in range(2):  # both start on an empty store
        root = repo_root(tmp_path / f"worker{i}")
        procs.append(subprocess.Popen(
            [sys.executable, "-c", f"from tests.test_search import worker; worker({str(root)!r}, '{k}', {str(folder)!r}, {i})"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(outputs)
    study = load("s-two", tmp_path)
    assert sorted(t.number for t in study.trials) == list(range(2 * k))
    assert all(t.state == STATE.COMPLETE for t in study.trials)
    assert study.user_attrs[search.WORKERS_ATTR] == 2
    joined = [o.split(", worker ")[1][0] for o in outputs]  # each process's join index (the order is a race)
    assert sorted(joined) == ["0", "1"]
    # the two workers drew different random values (trial n is seeded 0 + n)
    assert len({t.params["injection.h_gamma"] for t in study.trials}) == 2 * k
    children = trial_runs("s-two", MlflowClient(store.tracking_uri(tmp_path)))
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == list(range(2 * k))
    seen = [[json.loads(line) for line in (folder / f"seen-{i}.jsonl").read_text().splitlines()] for i in range(2)]
    own = [[s["trial"] for s in seen[i]] for i in range(2)]
    assert [len(own[0]), len(own[1])] == [k, k] and sorted(own[0] + own[1]) == list(range(2 * k)), own
    for i in range(2):  # MLflow credits each trial to the worker that ran it
        assert sorted(int(r.data.tags["optuna.trial"]) for r in children if r.data.tags["diffinject.worker"] == joined[i]) \
            == sorted(own[i])
    # they ran concurrently on one storage: at each handshake both saw exactly the two paired trials running
    for a, b in zip(*seen):
        assert a["running"] == b["running"] == sorted([a["trial"], b["trial"]]), seen



def killable_worker(root: str, markers: str) -> None:
    """Entry point of the kill test's search process: each trial marks that it started, then takes a
    moment (the kill lands inside it) before the fake pipeline's deterministic metrics."""

    def marked_pipeline(params: dict, root: Path, curve: search.ValidationCurve) -> None:
        (Path(markers) / f"trial-{curve.trial.number}-{os.getpid()}").write_text("")
        time.sleep(0.5)
        fake_pipeline(params, root, curve)

    search.run_search(params("s-kill", n_trials=5, sampler="tpe"), Path(root), setup(marked_pipeline))


def _search_process(store: Path, markers: Path) -> subprocess.Popen:
    env = dict(os.environ, DVC_ROOT=str(store), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    root = repo_root(store / "repo") if not (store / "repo").exists() else store / "repo"
    markers.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-c", f"from tests.test_search import killable_worker; killable_worker({str(root)!r}, {str(markers)!r})"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _study_record(store_dir: Path) -> tuple[list, dict, str]:
    # that store's files by path: this module's own store may be in DVC_ROOT / MLFLOW_TRACKING_URI
    study = optuna.load_study(study_name="s-kill", storage=f"sqlite:///{store_dir / store.STORE_DIR / store.OPTUNA_DB}")
    trials = [(t.number, t.state, t.params, t.value) for t in study.trials]
    summary = json.loads((store_dir / "repo" / "metrics" / "search.json").read_text())
    summary.pop("worker"), summary.pop("storage")  # its index and seconds; the store's path
    return trials, summary, (store_dir / "repo" / "params.best.yaml").read_text()


@pytest.mark.slow
def test_a_search_killed_mid_trial_resumes_to_the_uninterrupted_study(tmp_path):
    """SIGKILL inside trial 2 of 5; the same command again takes over the killed worker, re-runs trial
    2 (same number, same params), runs 3 and 4 with the values an uninterrupted run draws, and ends with
    its study, search.json and params.best.yaml; the killed trial's MLflow run is marked FAILED."""
    whole = _search_process(tmp_path / "whole", tmp_path / "whole-markers")
    out = whole.communicate(timeout=300)[0]
    assert whole.returncode == 0, out
    killed_markers = tmp_path / "killed-markers"
    proc = _search_process(tmp_path / "killed", killed_markers)
    deadline = time.monotonic() + 300
    while not list(killed_markers.glob("trial-2-*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "timeout"
        time.sleep(0.02)
    proc.kill()
    proc.communicate()
    rerun = _search_process(tmp_path / "killed", killed_markers)
    out = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, out
    assert "worker 0, resuming a killed worker: 2 finished, trial(s) [2] cut short and run again" in out
    assert sorted(p.name.rsplit("-", 1)[0] for p in killed_markers.iterdir()) == \
        ["trial-0", "trial-1", "trial-2", "trial-2", "trial-3", "trial-4"]
    assert _study_record(tmp_path / "killed") == _study_record(tmp_path / "whole")
    children = trial_runs("s-kill", MlflowClient(f"sqlite:///{tmp_path / 'killed' / store.STORE_DIR / store.MLFLOW_DB}"))
    states = sorted((int(r.data.tags["optuna.trial"]), r.info.status) for r in children)
    assert states == [(0, "FINISHED"), (1, "FINISHED"), (2, "FAILED"), (2, "FINISHED"), (3, "FINISHED"), (4, "FINISHED")]


@pytest.mark.slow
def test_one_real_trial_injects_trains_and_evaluates_on_valid_only(tiny_ddpm, prepared_mnist, tmp_path, monkeypatch):
    from diffinject.stages import search as search_stage

    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "store"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    n_steps = 6
    root = inverted_repo(tmp_path / "repo", prepared_mnist, *tiny_ddpm, n_steps)
    p = {"seed": 0, "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
         "injection": {"auto": False, "n_inv_step": n_steps, "n_gen_step": n_steps, "n_samples": 20, "n_samples_ratio": None, "batch_size": 10,
                       "label_from": "content"},
         "debiased": {"epochs": 2, "pool": None}, "evaluate": {"models": ["vanilla", "debiased"]}, "registry": {"candidates": None},
         "search": {"study_name": "real", "n_trials": 1, "pruner": "none"}}
    summary = search_stage.run(p, root)
    assert summary["n_trials"]["complete"] == 1
    (trial,) = trial_runs("real", MlflowClient(store.tracking_uri(root)))
    metrics = trial.data.metrics
    assert metrics["debiased.valid.acc"] == summary["best_value"]
    # evaluate's valid accuracy is the training run's selected-epoch valid accuracy: same weights, same split
    assert metrics["debiased.valid.acc"] == pytest.approx(metrics["debiased/valid.acc"], abs=1e-6)
    assert metrics["debiased/n_pool"] == round(summary["best_params"]["debiased.bias_conflict_ratio"] * 4000)
    assert metrics["inject/n_samples"] == 20
    assert not [k for k in metrics if ".test." in k or k.startswith("vanilla.")]  # valid split, searched model only
    assert not (root / "data" / "synthetic").exists() and not (root / "models" / "debiased").exists()


class PruneFromEpoch(optuna.pruners.BasePruner):
    """Prunes every trial once it has reported `epoch` epochs."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def prune(self, study, trial) -> bool:
        return trial.last_step is not None and trial.last_step >= self.epoch


@pytest.mark.parametrize("prune_at, epochs_run", [(2, 2), (99, 4)])
def test_pruning_stops_the_training_at_the_rejected_epoch(prepared_mnist, prune_at, epochs_run):
    """The callback reports each validation epoch as it ends, and the pruner's first 'no' ends training."""
    from diffinject.data.tensors import load_split
    from diffinject.models.classifier import SELECT_METRIC
    from diffinject.models.configs import TrainConfig
    from diffinject.models.trainer import TrainerConfig
    from diffinject.models.training import train_classifier

    study = optuna.create_study(direction="maximize", pruner=PruneFromEpoch(prune_at))
    curve = search.ValidationCurve(study.ask(), "valid_acc", True, lambda rows: None)
    train, valid = load_split(prepared_mnist, "train"), load_split(prepared_mnist, "valid")
    result = train_classifier(train, valid, 10, TrainConfig(epochs=4, batch_size=512),
                              TrainerConfig(enable_progress_bar=False), 0, "debiased",
                              callbacks=[curve.lightning_callback(SELECT_METRIC)])
    assert len(result.history) == epochs_run
    assert sorted(study.trials[0].intermediate_values) == list(range(1, epochs_run + 1))
    assert (curve.pruned_reason is not None) == (epochs_run < 4)


def test_pruning_callback_names_a_missing_metric(prepared_mnist):
    from diffinject.data.tensors import load_split
    from diffinject.models.configs import TrainConfig
    from diffinject.models.trainer import TrainerConfig
    from diffinject.models.training import train_classifier

    study = optuna.create_study(direction="maximize")
    curve = search.ValidationCurve(study.ask(), "valid_acc", True, lambda rows: None)
    train, valid = load_split(prepared_mnist, "train"), load_split(prepared_mnist, "valid")
    with pytest.raises(metrics_files.MissingMetricError, match="'valid/auc' not logged"):
        train_classifier(train, valid, 10, TrainConfig(epochs=1, batch_size=512), TrainerConfig(enable_progress_bar=False),
                         0, "debiased", callbacks=[curve.lightning_callback("valid/auc")])


@pytest.mark.parametrize(("url", "expected"), [
    ("not a url", r"'not a url' is not a database URL"),
    ("nosuchdb://u@host/db", r"nosuchdb://u@host/db: cannot open the Optuna storage"),
    ("postgresql://u:s3cret@127.0.0.1:1/optuna", r"postgresql://u:\*\*\*@127.0.0.1:1/optuna: cannot open the Optuna storage"),
])
def test_an_unusable_storage_url_is_one_line_without_its_password(url, expected):
    from diffinject.tracking.search import open_storage

    with pytest.raises(DiffinjectError, match=expected) as caught:
        open_storage(url)
    assert "s3cret" not in str(caught.value) and "\n" not in str(caught.value)


def test_the_search_optimises_the_registered_candidate_from_the_pilots_choice(tmp_path):
    """The objective is the registry candidate with the best valid metric in metrics/eval.json (the model
    `register` would register), trials train that model, and the first trial is the pilot's choice."""
    from diffinject.stages import search as search_stage

    root = tmp_path / "repo"
    (root / "metrics").mkdir(parents=True)
    (root / "metrics" / "eval.json").write_text(json.dumps({
        "debiased": {"valid": {"acc": 0.70}}, "debiased_lff": {"valid": {"acc": 0.79}, "test": {"acc": 0.99}},
        "debiased_lc": {"valid": {"acc": 0.78}}, "lff": {"valid": {"acc": 0.95}}}))  # lff is no candidate
    rows = [{"name": n, "operator": "channel_stats", "site": s, "t_edit": 0, "t_max": t, "h_gamma": g, "label_from": "style",
             "score": score} for n, s, t, g, score in (("a", ["up0", "up1"], 300, 1.0, 0.30), ("b", ["up1"], None, 0.7, 0.40),
                                                       ("c", ["h"], 300, 1.0, 0.10))]
    (root / "metrics" / "inject.json").write_text(json.dumps({"pilot": {"winner": "b", "candidates": rows}}))
    params = {"seed": 0, "debiased": {"bias_conflict_ratio": 0.9}, "debiased_lff": {"lr": 2e-3},
              "search": {"pilot_keep": 0.5}}
    setup, metric = search_stage.setup_for(params, root)
    assert metric == "debiased_lff.valid.acc" and setup.model == "debiased_lff"
    assert list(setup.settings) == ["channel_stats up0+up1 t<=300 label:style", "channel_stats up1 all t label:style"]
    assert setup.first_trial == {"injection.setting": "channel_stats up1 all t label:style", "injection.h_gamma": 0.7,
                                 "debiased.bias_conflict_ratio": 0.5, "debiased_lff.lr": 2e-3}  # ratio clipped to the range
    assert setup.fixed["debiased_lff.pool"] == "data/synthetic/manifest.parquet"
    params["debiased"]["bias_conflict_ratio"] = [0.1, 0.3, 0.5]  # a list: its middle starts the search
    assert search_stage.setup_for(params, root)[0].first_trial["debiased.bias_conflict_ratio"] == 0.3
    params["search"]["model"] = "debiased_lc"
    assert search_stage.setup_for(params, root)[1] == "debiased_lc.valid.acc"


def test_every_model_has_a_space_of_its_own_keys():
    """Each model samples its own section's keys (and the ratio's one home where it adds images; the
    injection for the DiffInject rows), and search.ranges replaces a range of that space only."""
    from diffinject.stages import search as search_stage

    cfg = search.SearchConfig()
    for model in search_stage.STAGES:
        own = search_stage.section_of(model)
        allowed = {own} | ({"debiased"} if model in ("upsample", *search_stage.POOL_STAGES) else set()) \
            | ({"injection"} if model in search_stage.POOL_STAGES else set())
        targets = [dim.target for dim in search_stage.model_space(cfg, model)]
        assert f"{own}.lr" in targets and {t.split(".")[0] for t in targets} <= allowed, model
        if "debiased" in {t.split(".")[0] for t in targets}:
            assert search_stage.RATIO in targets
    tuned = search.SearchConfig(ranges={"lc": {"tau": [0.25, 4.0]}})
    (tau,) = [d for d in search_stage.model_space(tuned, "lc") if d.target == "lc.tau"]
    assert (tau.low, tau.high, tau.log) == (0.25, 4.0, True)
    with pytest.raises(DiffinjectError, match=r"params 'search.ranges.lff.tau': not a key the search of lff samples"):
        search_stage.model_space(search.SearchConfig(ranges={"lff.tau": [0.5, 2.0]}), "lff")
    with pytest.raises(DiffinjectError, match=r"params 'search.ranges.lc.tau': got \[2.0, 1.0\], expected \[low, high\]"):
        search_stage.model_space(search.SearchConfig(ranges={"lc.tau": [2.0, 1.0]}), "lc")


def test_a_baselines_first_trial_is_its_params_and_the_searched_ratio_reaches_the_stage(tmp_path):
    from diffinject.stages import debiased_lff, search as search_stage, upsample
    from diffinject.stages.mixing import pool_ratio

    params = {"seed": 0, "lc": {"tau": 3.0}, "disent": {"swap_after": 100}, "search": {"model": "lc"}}
    setup, metric = search_stage.setup_for(params, tmp_path)
    assert metric == "lc.valid.acc" and not setup.settings and setup.required_inputs == (Path("data/prepared"),)
    # the untuned model is trial 0: its params (defaults where unset), clipped into the ranges
    assert setup.first_trial == {"lc.lr": 1e-3, "lc.tau": 2.0, "lc.eta": 1.0, "lc.ema_alpha": 0.995, "lc.biased_lr_ratio": 1.0}
    assert setup.fixed == {"evaluate.models": ["lc"], "evaluate.splits": ["valid"]}
    first = search_stage.setup_for({**params, "search": {"model": "disent"}}, tmp_path)[0].first_trial
    assert first["disent.swap_after"] == 100 and isinstance(first["disent.swap_after"], int)
    up = search_stage.setup_for({**params, "debiased": {"bias_conflict_ratio": [0.1, 0.5]}, "search": {"model": "upsample"}},
                                tmp_path)[0]
    assert up.first_trial[search_stage.RATIO] == pytest.approx(0.3) and Path("data/conflicts.csv") in up.required_inputs
    # one home for the ratio: what a trial sets is what the stage that trains reads
    for stage in (debiased_lff, upsample):
        trial_params = search.overlay({"debiased": {"bias_conflict_ratio": [0.1, 0.5]}}, {search_stage.RATIO: 0.37})
        assert pool_ratio(stage.PARAMS.load(trial_params)) == 0.37


@pytest.mark.slow
def test_a_trial_of_a_baseline_trains_and_writes_only_its_own_folder(prepared_mnist, tmp_path, monkeypatch):
    from diffinject.stages import search as search_stage

    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "store"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    (root / "data" / "prepared").symlink_to(prepared_mnist)
    p = {"seed": 0, "trainer": {"accelerator": "cpu", "enable_progress_bar": False}, "lc": {"epochs": 2},
         "registry": {"candidates": None},
         "search": {"study_name": "lc-real", "n_trials": 2, "pruner": "none", "keep_trial_dirs": True}}
    summary = search_stage.run(p, root, model="lc")
    assert summary["n_trials"]["complete"] == 2 and set(summary["best_params"]) == {
        d.target for d in search_stage.model_space(search.SearchConfig(), "lc")}
    trials = sorted((tmp_path / "store" / "mlruns" / "search" / "lc-real").iterdir())
    assert len(trials) == 2
    for trial in trials:
        assert sorted(p.name for p in (trial / "models").iterdir()) == ["lc"]
        assert set(json.loads((trial / "metrics" / "eval.json").read_text())) == {"lc"}
    assert sorted(p.name for p in root.iterdir()) == ["data", "metrics", "params.best.yaml"]  # nothing trained here
    assert "dvc exp run -S lc.lr=" in (root / "params.best.yaml").read_text()
