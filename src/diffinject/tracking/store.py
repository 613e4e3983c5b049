"""Where runs, models and studies are stored: the MLflow tracking URI, its artifact location and the
Optuna storage, all resolved to the *main* repository so every pipeline run lands in one store.

The rule for the main repository root (first match wins):

1. `DVC_ROOT` — DVC sets it for every stage command, and `dvc exp run --temp` / `--queue` set it to the
   parent repository, not to the temporary copy under `.dvc/tmp/exps/` the experiment runs in;
2. a working directory inside `<repo>/.dvc/tmp/exps/...` (a stage run by hand in such a copy): `<repo>`;
3. `git rev-parse --git-common-dir` (so a `git worktree` shares the main checkout's store): its parent;
4. the working directory.

`MLFLOW_TRACKING_URI` overrides the tracking URI (a server, PostgreSQL, another SQLite file); the
`search.storage` param or `--storage` overrides the Optuna storage. (`mlflow.set_tracking_uri` exports
`MLFLOW_TRACKING_URI`, so once a process has set up MLflow, it and its children keep that store.)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import filelock  # a dependency of torch, so always installed with it

from diffinject.errors import DiffinjectError, first_line

STORE_DIR = "mlruns"  # under the main repository root; git-ignored
MLFLOW_DB = "mlflow.db"
OPTUNA_DB = "optuna.db"
ARTIFACTS_DIR = "artifacts"  # beside a local SQLite tracking database
LOCK_FILE = ".lock"
# Seconds a process waits for the store lock (another process creating the schema, a study, a version).
LOCK_TIMEOUT_S = 300
# Seconds SQLite waits on a locked database before "database is locked" (two workers writing at once).
SQLITE_TIMEOUT_S = 60
DVC_TEMP_EXPS = (".dvc", "tmp", "exps")
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_DVC_ROOT = "DVC_ROOT"


def main_repo_root(cwd: Path | None = None) -> Path:
    """The main repository's root (module docstring for the rule)."""
    cwd = Path(cwd or Path.cwd()).resolve()
    dvc_root = os.environ.get(ENV_DVC_ROOT)
    if dvc_root:
        return Path(dvc_root).resolve()
    parts = cwd.parts
    for i in range(len(parts) - len(DVC_TEMP_EXPS)):
        if parts[i + 1: i + 1 + len(DVC_TEMP_EXPS)] == DVC_TEMP_EXPS:
            return Path(*parts[: i + 1])
    try:
        common = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=cwd,
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return cwd
    return Path(common).parent


def store_dir(root: Path | None = None) -> Path:
    return main_repo_root(root) / STORE_DIR


def tracking_uri(root: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI`, else `sqlite:///<main repo>/mlruns/mlflow.db`."""
    return os.environ.get(ENV_TRACKING_URI) or f"sqlite:///{store_dir(root) / MLFLOW_DB}"


def artifact_location(uri: str) -> str | None:
    """Artifacts of a local SQLite store live beside its database (`<dir>/artifacts`), so a run started in
    a temporary DVC copy does not leave them in that copy; a server or other database decides itself."""
    db = sqlite_path(uri)
    return (db.parent / ARTIFACTS_DIR).as_uri() if db is not None else None


def optuna_storage_url(storage: str | None, root: Path | None = None) -> str:
    """`storage` (any SQLAlchemy URL), else `sqlite:///<main repo>/mlruns/optuna.db`."""
    return storage or f"sqlite:///{store_dir(root) / OPTUNA_DB}"


def redacted(url: str) -> str:
    """`url` with the password of its user part replaced by ***: what may be printed or logged."""
    try:
        parsed = urlparse(url)
        if parsed.password is None:
            return url
    except ValueError:  # not a URL at all (e.g. an unclosed "[" where a host would be): nothing to hide
        return url
    host = parsed.netloc.rsplit("@", 1)[1]
    return parsed._replace(netloc=f"{parsed.username}:***@{host}").geturl()


# URI schemes MLflow serves itself (a server, a folder, Databricks); any other is a SQLAlchemy database URL.
NOT_A_DATABASE = ("", "file", "http", "https", "databricks", "databricks-uc", "uc")
CONNECT_TIMEOUT_S = 10


def check_database(uri: str) -> None:
    """Connect once to a database tracking URI (postgresql://, mysql://, ...) before MLflow does: MLflow
    retries an unreachable one for ~100 s, printing each failure, where a typo deserves one line at once."""
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme in NOT_A_DATABASE or scheme == "sqlite":
        return
    import sqlalchemy  # here: only a database URI pays its import

    try:
        args = {"connect_timeout": CONNECT_TIMEOUT_S} if scheme in ("postgresql", "mysql") else {}
        engine = sqlalchemy.create_engine(uri, connect_args=args)
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except (ImportError, sqlalchemy.exc.SQLAlchemyError) as exc:
        reason = first_line(exc).replace(uri, redacted(uri))
        raise DiffinjectError(f"{ENV_TRACKING_URI} {redacted(uri)}: cannot open the MLflow store ({reason})") from exc


def sqlite_path(url: str) -> Path | None:
    """The database file of a `sqlite:///` URL, None for any other URL."""
    parsed = urlparse(url)
    if parsed.scheme != "sqlite":
        return None
    if not parsed.path or parsed.path == "/":
        raise DiffinjectError(f"{url}: a SQLite URL needs a file path (sqlite:////absolute/path.db)")
    # SQLAlchemy: sqlite:///rel.db is relative ("/rel.db"), sqlite:////abs.db absolute ("//abs.db")
    return Path(parsed.path[1:])


@contextlib.contextmanager
def store_lock(root: Path | None = None) -> Iterator[None]:
    """Serialise the read-decide-write steps that must not interleave between processes on one machine:
    schema, experiment and study creation, and the registry's champion decision (two queued experiments
    registering at once). The stores handle concurrent runs and trials themselves."""
    directory = store_dir(root)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with filelock.FileLock(str(directory / LOCK_FILE), timeout=LOCK_TIMEOUT_S):
            yield
    except filelock.Timeout as exc:
        raise DiffinjectError(
            f"{directory / LOCK_FILE}: still locked after {LOCK_TIMEOUT_S} s by another process "
            "(a hung search or register? delete the file if no such process is running)"
        ) from exc


def ensure_sqlite_dir(url: str) -> None:
    """Create the folder of a SQLite database (the stores create the file, not its folder)."""
    db = sqlite_path(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
