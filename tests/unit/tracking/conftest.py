"""Fixtures shared by the tracking tests."""

from __future__ import annotations

import shutil

import pytest

from rotmnist.paths import Paths


@pytest.fixture
def ws(tmp_path, monkeypatch, empty_store) -> Paths:
    """A workspace whose default store (mlflow.db at its root) is a fresh copy of the empty store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return Paths(root=tmp_path, store_root=tmp_path)
