"""A tiny copy of the repository in a temporary git repo, and the venv's tools run in it, for end-to-end `dvc` runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from rotmnist import workspace
from tests.support.helpers import tiny_mnist, write_idx_dir

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Tiny sizes for every stage, set through params only (as config/quick.yaml is for `make quick`).
TINY_OVERLAY = Path(__file__).resolve().parent / "tiny.yaml"


def tool_env() -> dict[str, str]:
    """The activated environment: the venv's tools first on PATH, no MLflow store chosen from outside."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "ROTMNIST_STORE_ROOT")}
    return env | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    """Run a command with the venv's tools first on PATH; fail with its output if it fails."""
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def set_params(params_file: Path, overrides: dict) -> None:
    """Merge nested `overrides` into a params.yaml."""
    data = workspace.merged(yaml.safe_load(params_file.read_text()), overrides)
    params_file.write_text(yaml.safe_dump(data, sort_keys=False))


def make_tiny_repo(tmp_path: Path) -> Path:
    """Create the tiny workspace in `tmp_path` (`repo/`, its IDX files and its DVC remote beside it).

    The same mechanism as `make quick`: `rotmnist workspace` with the settings of TINY_OVERLAY.
    """
    idx = write_idx_dir(tmp_path / "idx", tiny_mnist(n_train=300, n_test=60, seed=0))
    source = {"download": {"source": "idx_dir", "idx_dir": str(idx)}}
    repo = workspace.build(REPO, tmp_path / "repo", [workspace.read_overlay(TINY_OVERLAY), source])
    run(["dvc", "remote", "modify", "local", "url", str(tmp_path / "remote")], repo)
    workspace.commit(repo, "tiny pipeline")
    return repo
