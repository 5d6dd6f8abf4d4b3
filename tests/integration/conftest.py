"""A tiny copy of the repository in a temporary git repo, for end-to-end `dvc` runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# What a clone holds that the pipeline needs (data and stores are made by the run).
PROJECT_FILES = ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore", "src")


def run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    """Run a command with the venv's tools first on PATH; fail with its output if it fails."""
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("ROTMNIST_STORE_ROOT", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def set_params(params_file: Path, overrides: dict) -> None:
    """Merge nested `overrides` into a params.yaml."""
    data = yaml.safe_load(params_file.read_text())

    def merge(base: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value

    merge(data, overrides)
    params_file.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    """A git + DVC repository holding the project's pipeline, on a tiny MNIST in IDX files."""
    return make_tiny_repo(tmp_path)


def make_tiny_repo(tmp_path: Path) -> Path:
    """Create the tiny repository in `tmp_path` (`repo/`, its IDX files and its DVC remote beside it)."""
    from tests.support.helpers import tiny_mnist, write_idx_dir

    repo = tmp_path / "repo"
    repo.mkdir()
    for name in PROJECT_FILES:
        src = REPO / name
        dst = repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dst)
    write_idx_dir(tmp_path / "idx", tiny_mnist(n_train=300, n_test=60, seed=0))
    set_params(
        repo / "params.yaml", TINY_PARAMS | {"download": {"source": "idx_dir", "idx_dir": str(tmp_path / "idx")}}
    )
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "config", "user.email", "ci@example.com"], repo)
    run(["git", "config", "user.name", "CI"], repo)
    run(["dvc", "remote", "modify", "local", "url", str(tmp_path / "remote")], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny pipeline"], repo)
    return repo


# Tiny sizes for every stage, set through params only.
TINY_PARAMS: dict = {
    "split": {"val_fraction": 0.2, "holdout_fraction": 0.2},
    "tune": {
        "n_trials": 2,
        "epochs": 1,
        "train_fraction": 1.0,
        "val_fraction": 1.0,
        "pruner": "none",
        "space": {"batch_size": [64], "cnn": {"blocks": [1], "channels": [4], "kernel": [3], "dense": [16]}},
    },
    "train": {"epochs": 1, "num_threads": 1},
    "compare": {
        "train_images": 2000,
        "batch_size": 64,
        "specs": {"cnn": {"blocks": 1, "channels": 4, "dense": 16}, "mlp": {"layers": 1, "width": 32}},
    },
    "latency": {"warmup": 2, "single_calls": 20, "batch_size": 32, "batch_calls": 2},
    "curriculum": {
        "initial_sources": 60,
        "increment": 30,
        "max_rounds": 1,
        "monitor_sources": 30,
        "epochs": 1,
        "batch_size": 32,
        "model": {"family": "cnn", "blocks": 1, "channels": 4, "kernel": 3, "dense": 16},
    },
}


@pytest.fixture(scope="session")
def postgres() -> dict[str, str]:
    """A throwaway PostgreSQL cluster with databases `optuna`, `mlflow` and `registry`: {name: URL}."""
    from tests.support.postgres import SKIP_REASON, pg_bin, postgres_cluster

    if pg_bin() is None:
        pytest.skip(SKIP_REASON)
    with postgres_cluster(("optuna", "mlflow", "registry")) as urls:
        yield urls
