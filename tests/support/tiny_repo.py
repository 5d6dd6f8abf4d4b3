"""A tiny copy of the repository in a temporary git repo, and the venv's tools run in it, for end-to-end `dvc` runs."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

from rotmnist import workspace
from tests.support.headlines import HEADLINES, expected_headline
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


def copy_workspace(repo: Path, dest: Path) -> Path:
    """Copy the tiny workspace `repo` and its siblings (IDX files, DVC remote) into `dest`; return the copy.

    The copy is the same workspace in a new place: the MLflow store's artifact locations and the DVC remote
    (in `.dvc/config.local`, outside git) point into it. What git and DVC track stays byte for byte, so DVC
    sees every stage up to date; params.yaml still names the original's IDX files, which no stage changes.
    """
    shutil.copytree(repo.parent, dest, symlinks=True)
    copy = dest / repo.name
    _relocate_mlflow(copy, f"{repo.parent}/", f"{dest}/")
    (copy / ".dvc" / "config.local").write_text(f"['remote \"local\"']\n    url = {dest / 'remote'}\n")
    return copy


def _relocate_mlflow(repo: Path, old: str, new: str) -> None:
    """Point the SQLite MLflow store at `repo` and its artifacts (MLmodel files) at the copy's folder."""
    with sqlite3.connect(repo / "mlflow.db") as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for _, column, kind, *_ in db.execute(f'PRAGMA table_info("{table}")').fetchall():
                if "CHAR" in kind.upper() or "TEXT" in kind.upper():
                    db.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?)', (old, new))
    db.close()
    for mlmodel in (repo / "mlartifacts").rglob("MLmodel"):
        mlmodel.write_text(mlmodel.read_text().replace(old, new))


# What `dvc metrics show` shows: each stage's headline figures, a flat row derived from its report.
METRICS_FILES = {f"metrics/{n}.json" for n in HEADLINES}
REPORT_FILES = {f"reports/{n}.json" for n in ("data_profile", "split_manifest", *HEADLINES)}
MAX_METRICS = 30  # values in all metrics files together: one row per file that fits a wide terminal


def assert_each_headline_is_its_report(repo: Path) -> None:
    """metrics/<stage>.json holds exactly its headline keys, each the value (and type) its report holds."""
    assert {p.relative_to(repo).as_posix() for p in (repo / "reports").glob("*.json")} == REPORT_FILES
    for stage in HEADLINES:
        headline = json.loads((repo / "metrics" / f"{stage}.json").read_text())
        expected = expected_headline(stage, json.loads((repo / "reports" / f"{stage}.json").read_text()))
        assert headline == expected, stage
        assert {k: type(v) for k, v in headline.items()} == {k: type(v) for k, v in expected.items()}, stage
        assert headline["seconds"] > 0 or (stage == "finetune" and not headline["finetuned"]), stage  # a copy: ~0 s


def assert_dvc_shows_every_metric(repo: Path) -> None:
    """`dvc metrics show` loads every metrics file whole, as written, at most MAX_METRICS headline values."""
    proc = run(["dvc", "metrics", "show", "--json"], repo)
    assert not proc.stderr.strip(), proc.stderr
    shown = json.loads(proc.stdout)[""]["data"]
    files = {f"metrics/{p.name}": json.loads(p.read_text()) for p in sorted((repo / "metrics").glob("*.json"))}
    assert set(shown) == set(files) == METRICS_FILES
    for path, content in files.items():
        assert "error" not in shown[path], (path, shown[path])
        assert shown[path]["data"] == content, path  # DVC silently drops a value it cannot show
    assert sum(len(shown[path]["data"]) for path in shown) <= MAX_METRICS
    assert_each_headline_is_its_report(repo)
