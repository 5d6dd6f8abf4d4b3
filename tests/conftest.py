"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tests.support.tracking import restored_mlflow


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `pytest -n N --dist loadgroup` (`make test`), each module's tests run on one worker, so a module
    fixture (a store, a server) is made once; modules that name one `xdist_group` share a worker and its
    session fixtures (the tiny pipeline of tests/integration/conftest.py)."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        if not any(item.iter_markers("xdist_group")):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


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
