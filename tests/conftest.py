"""Fixtures shared by every test folder."""

from __future__ import annotations

import os

# `make test` runs one pytest-xdist worker per core. Torch's default, a thread per core in each worker and in
# every process a test starts, oversubscribes the cores while OpenMP's idle threads spin: one thread per process
# does the same work in about two thirds of the time. Set here, before anything loads torch.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tests.support.tracking import restored_mlflow

# Modules that share one worker under `pytest -n N --dist loadfile` (`make test`), and with it the session
# fixtures they use: the tiny pipeline that tests/integration/conftest.py trains once.
SHARED_WORKER = {
    f"tests/integration/{name}.py": "tiny_trained"
    for name in ("test_faults", "test_loop", "test_pipeline", "test_pipeline_reruns")
}


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadfile`, but the modules named in SHARED_WORKER run on one worker (pytest-xdist's own
    xdist_group marker cannot regroup tests under pytest 9)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ModulesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return SHARED_WORKER.get(module, module)

    return ModulesTogether(config, log)


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
