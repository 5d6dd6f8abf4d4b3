"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tests.support.tracking import restored_mlflow


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An initialised, empty SQLite MLflow store (creating its tables takes seconds: do it once, copy it)."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture(autouse=True)
def mlflow_state() -> Iterator[None]:
    """After each test, end the runs it left open and put MLflow's URIs, experiment and their environment
    variables back (as MLflow's own test suite does), so no test tracks to the store of the one before."""
    with restored_mlflow():
        yield
        while mlflow.active_run():  # ended while the test's tracking URI still names the run's store
            mlflow.end_run()
