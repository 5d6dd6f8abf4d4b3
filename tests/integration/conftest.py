"""A tiny copy of the repository in a temporary git repo, for end-to-end `dvc` runs (tests/support/tiny_repo.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiny_repo import copy_workspace, make_tiny_repo, run


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    """A git + DVC repository holding the project's pipeline, on a tiny MNIST in IDX files."""
    return make_tiny_repo(tmp_path)


# What the session's tiny pipeline runs once: every stage but the gate, whose registry and thresholds the tests set.
BEFORE_THE_GATE = ("finetune", "compare", "curriculum")


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory) -> Path:
    """The tiny workspace with every stage but `monitor` reproduced, made once per session; never changed:
    the tests work on their copies (`trained_repo`)."""
    repo = make_tiny_repo(tmp_path_factory.mktemp("tiny-trained"))
    run(["dvc", "repro", *BEFORE_THE_GATE], repo)
    return repo


@pytest.fixture
def trained_repo(tiny_trained: Path, tmp_path: Path) -> Path:
    """A copy of the session's tiny workspace, trained but not yet gated, with its own stores and DVC remote."""
    return copy_workspace(tiny_trained, tmp_path / "copy")


@pytest.fixture(scope="session")
def postgres() -> dict[str, str]:
    """A throwaway PostgreSQL cluster with databases `optuna`, `mlflow` and `registry`: {name: URL}."""
    from tests.support.postgres import postgres_cluster

    with postgres_cluster(("optuna", "mlflow", "registry")) as urls:
        yield urls
