"""A tiny copy of the repository in a temporary git repo, for end-to-end `dvc` runs (tests/support/tiny_repo.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiny_repo import make_tiny_repo


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    """A git + DVC repository holding the project's pipeline, on a tiny MNIST in IDX files."""
    return make_tiny_repo(tmp_path)


@pytest.fixture(scope="session")
def postgres() -> dict[str, str]:
    """A throwaway PostgreSQL cluster with databases `optuna`, `mlflow` and `registry`: {name: URL}."""
    from tests.support.postgres import postgres_cluster

    with postgres_cluster(("optuna", "mlflow", "registry")) as urls:
        yield urls
