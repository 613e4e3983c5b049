"""A real PostgreSQL server (Debian's `postgresql` package), started on 127.0.0.1 for this module: the
Optuna storage of 3 worker processes (no trial lost, none duplicated), the MLflow backend store of the
register stage (runs, registry versions, the champion alias), and an `mlflow server` on it serving the
UI. Skipped, with the reason, where the server binaries are not installed (`.ci/run` installs them)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow
USER = "diffinject"


def _binary(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the package's `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres() -> str:
    """A throw-away cluster on 127.0.0.1:<free port> (trust auth, only loopback); yields its base URL."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    if os.geteuid() == 0 and subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
        pytest.skip("running as root and there is no 'postgres' user to run the server as")
    folder = Path(tempfile.mkdtemp(prefix="diffinject-pg-"))
    data, port = folder / "data", free_port()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    subprocess.run(_as_server_user([initdb, "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8"]),
                   check=True, capture_output=True)
    subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-l", str(folder / "server.log"), "-w", "-o",
                                    f"-h 127.0.0.1 -p {port} -k {folder}", "start"]), check=True, capture_output=True)
    base = f"postgresql+psycopg://{USER}@127.0.0.1:{port}"
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 port={port} user={USER} dbname=postgres", autocommit=True) as conn:
        for db in ("optuna", "mlflow"):
            conn.execute(f"CREATE DATABASE {db}")
    yield base
    subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-m", "fast", "stop"]), capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


def test_three_search_workers_share_one_postgres_study(postgres, tmp_path):
    """3 processes, 2 trials each, on one study: 6 trials numbered 0..5, each complete, each with its
    MLflow run credited to one worker."""
    import optuna

    url, k = f"{postgres}/optuna", 2
    env = dict(os.environ, DVC_ROOT=str(tmp_path), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    code = ("import sys\nfrom pathlib import Path\nfrom diffinject.tracking import search\n"
            "from tests.test_search import params, repo_root, setup\n"
            "root = repo_root(Path(sys.argv[1]))\n"
            f"search.run_search(params('pg', storage={url!r}, n_trials={k}), root, setup())\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"worker{i}")], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(3)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n\n".join(outputs)
    study = optuna.load_study(study_name="pg", storage=url)
    assert sorted(t.number for t in study.trials) == list(range(3 * k))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert sorted(o.split(", worker ")[1][0] for o in outputs) == ["0", "1", "2"]
    assert all("127.0.0.1" in o and "s3cret" not in o for o in outputs)


def test_mlflow_on_postgres_registers_and_moves_the_champion(postgres, prepared_mnist, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from diffinject.stages import register
    from diffinject.tracking import registry, registry_config
    from tests.test_registry import make_pipeline_root, params

    uri = f"{postgres}/mlflow"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    decisions = [register.run(params("pg-model"), make_pipeline_root(tmp_path / f"r{i}", prepared_mnist, acc, seed=i))
                 for i, acc in enumerate((0.5, 0.4, 0.6))]
    assert [(d["version"], d["alias"]) for d in decisions] == [(1, "champion"), (2, "challenger"), (3, "champion")]
    client = MlflowClient(uri)
    assert int(client.get_model_version_by_alias("pg-model", registry.CHAMPION).version) == 3
    experiment = client.get_experiment_by_name(registry_config.RegistryConfig().experiment).experiment_id
    parents = client.search_runs([experiment], "attributes.status = 'FINISHED' and tags.`diffinject.pid` != ''")
    assert {r.info.run_id for r in parents} >= {d["run_id"] for d in decisions}


def test_mlflow_server_on_postgres_serves_the_ui(postgres, tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"{postgres}/mlflow",
                               "--default-artifact-root", (tmp_path / "artifacts").as_uri(), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    assert r.read().strip() == b"OK"
                    break
            except OSError:
                assert server.poll() is None, "mlflow server exited"
                assert time.monotonic() < deadline, "mlflow server did not answer in 120 s"
                time.sleep(0.5)
        from mlflow.tracking import MlflowClient

        through_server = MlflowClient(f"http://127.0.0.1:{port}").create_experiment("made-through-the-server")
        assert MlflowClient(f"{postgres}/mlflow").get_experiment(through_server).name == "made-through-the-server"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
    finally:
        server.terminate()
        server.wait(timeout=30)
