"""Which process owns a run, and reaping the runs whose process is gone: a run left RUNNING by a process
that no longer exists (a SIGKILL, a power cut) is marked FAILED by the next process on that host that
opens the store, instead of staying RUNNING in the UI for ever. A search worker's ownership of its
index in a study uses the same tags."""

from __future__ import annotations

import os
import socket
from typing import Mapping

from mlflow.tracking import MlflowClient

OWNER_HOST, OWNER_PID = "diffinject.host", "diffinject.pid"


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
