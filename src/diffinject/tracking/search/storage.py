"""The Optuna storage: opening an RDB storage (SQLite waits on a locked file, heartbeats on) and the URL
as it may be logged."""

from __future__ import annotations

import warnings

import optuna
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from diffinject.errors import DiffinjectError, first_line
from diffinject.tracking import store

HEARTBEAT_INTERVAL_S = 60  # a running trial's heartbeat; one silent for GRACE_PERIOD_S is marked FAIL
GRACE_PERIOD_S = 180


def storage_label(url: str) -> str:
    """The storage URL without its password (it is logged as a tag, and named in errors)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError as exc:
        raise DiffinjectError(f"params 'search.storage' (or --storage): {url!r} is not a database URL "
                              "(expected e.g. sqlite:////abs/path.db or postgresql://user@host/db)") from exc


def open_storage(url: str) -> optuna.storages.RDBStorage:
    store.ensure_sqlite_dir(url)
    # SQLite: wait on a file another worker holds locked instead of failing at once
    engine_kwargs = {"connect_args": {"timeout": store.SQLITE_TIMEOUT_S}} if store.sqlite_path(url) else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_INTERVAL_S,
                                              grace_period=GRACE_PERIOD_S)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        # an unknown dialect, a missing driver, a server that refuses: SQLAlchemy's own multi-line error, in
        # one line and without the URL's password (the label hides it)
        reason = first_line(exc)
        raise DiffinjectError(f"{storage_label(url)}: cannot open the Optuna storage ({reason.replace(url, storage_label(url))})") from exc
