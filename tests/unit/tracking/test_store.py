"""MLflow plumbing: store resolution, experiment creation, tags, DVC hashes and dataset digests."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from rotmnist.errors import PipelineError
from rotmnist.paths import Paths
from rotmnist.tracking import store
from tests.support.tracking import mlflow_config


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    paths = Paths(root=tmp_path / "copy", store_root=tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store.tracking_uri(mlflow_config(), paths) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert store.tracking_uri(mlflow_config(uri="http://server:5000"), paths) == "http://server:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert store.tracking_uri(mlflow_config(uri="http://server:5000"), paths) == "sqlite:///elsewhere.db"


def test_configure_mlflow_creates_the_experiment_once_with_artifacts_at_the_store_root(ws):
    experiment_id = store.configure_mlflow(mlflow_config("exp-a"), ws)
    assert mlflow.get_tracking_uri() == f"sqlite:///{ws.mlflow_db}"
    experiment = mlflow.get_experiment(experiment_id)
    assert experiment.name == "exp-a"
    assert experiment.artifact_location == ws.mlflow_artifacts.resolve().as_uri()
    assert store.configure_mlflow(mlflow_config("exp-a"), ws) == experiment_id
    assert store.configure_mlflow(mlflow_config("exp-b"), ws) != experiment_id
    with mlflow.start_run() as run:
        mlflow.log_text("hello", "note.txt")
    assert run.info.experiment_id != experiment_id  # the last configured experiment is the active one
    assert (ws.mlflow_artifacts / run.info.run_id / "artifacts" / "note.txt").is_file()


def test_configure_mlflow_refuses_a_deleted_experiment(ws):
    experiment_id = store.configure_mlflow(mlflow_config("gone"), ws)
    MlflowClient().delete_experiment(experiment_id)
    with pytest.raises(PipelineError, match=r"'gone' is deleted .*\(mlflow experiments restore"):
        store.configure_mlflow(mlflow_config("gone"), ws)


def test_git_commit_inside_and_outside_git(tmp_path):
    paths = Paths(root=tmp_path, store_root=tmp_path)
    assert store.git_commit(paths) == "unknown"
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run(["git", "add", "f"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "m"], cwd=tmp_path, check=True)
    commit = store.git_commit(paths)
    assert len(commit) == 40 and all(c in "0123456789abcdef" for c in commit)


def test_folder_md5_is_dvcs_directory_hash(tmp_path):
    folder = tmp_path / "d"
    (folder / "b").mkdir(parents=True)
    (folder / "a.txt").write_text("1")
    (folder / "b" / "c.txt").write_text("2")
    # `dvc add d` of exactly these files records this hash (checked with DVC 3.67).
    assert store.folder_md5(folder) == "f1ea74b4fbfc160797e939835066e899.dir"
    assert store.folder_md5(folder / "a.txt") == "c4ca4238a0b923820dcc509a6f75849b"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        store.folder_md5(tmp_path / "missing")


def test_data_digest_reads_dvc_lock_and_falls_back_to_hashing(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    paths = Paths(root=tmp_path, store_root=tmp_path)
    out = tmp_path / "data" / "splits"
    out.mkdir(parents=True)
    (out / "x.npy").write_bytes(b"abc")
    computed = store.folder_md5(out)
    assert store.data_digest(paths, "data/splits") == computed  # no dvc.lock yet
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  split:\n    cmd: rotmnist split\n    outs:\n"
        "    - path: data/splits\n      hash: md5\n      md5: 0123456789abcdef0123456789abcdef.dir\n"
    )
    assert store.data_digest(paths, "data/splits") == "0123456789abcdef0123456789abcdef.dir"
    assert store.data_digest(paths, out) == "0123456789abcdef0123456789abcdef.dir"  # absolute path works
    assert store.data_digest(paths, out / "x.npy") == store.folder_md5(out / "x.npy")  # not in the lock
    tags = store.standard_tags(paths, "data/splits")
    lock_hash = "0123456789abcdef0123456789abcdef.dir"
    assert tags == {"git_commit": "unknown", "data_path": "data/splits", "data_hash": lock_hash}
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1a2b3")
    assert store.standard_tags(paths, "data/splits")["dvc_exp_name"] == "exp-1a2b3"


def test_array_digest_changes_with_content():
    a = np.arange(10, dtype=np.uint8)
    assert store.array_digest(a) == store.array_digest(a.copy())
    assert store.array_digest(a) != store.array_digest(a[::-1])
    assert len(store.array_digest(a, b"x")) == 32


@pytest.mark.parametrize(
    ("uri", "server"),
    [
        ("http://127.0.0.1:5000", True),
        ("https://mlflow.example.org", True),
        ("databricks", True),
        ("sqlite:////tmp/mlflow.db", False),
        ("postgresql+psycopg2://user@db/mlflow", False),
        ("mysql://user@db/mlflow", False),
        ("/tmp/mlruns", False),
    ],
)
def test_only_tracking_servers_choose_the_artifact_location(uri, server):
    # Every other store gets the repository's mlartifacts folder, so a `dvc exp run --queue` copy
    # does not leave its artifacts in a temporary directory.
    assert store._is_server(uri) is server


def test_the_lineage_hash_covers_the_corrections_a_model_trained_on(tmp_path):
    from rotmnist.data import feedback

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    paths = Paths(root=tmp_path, store_root=tmp_path)
    (paths.splits / "train").mkdir(parents=True)
    (paths.splits / "train" / "x.npy").write_bytes(b"digits")
    assert paths.lineage_data(True) == (paths.splits,)  # no corrections exported yet
    splits_only = store.standard_tags(paths, *paths.lineage_data(False))
    for name in feedback.FOLDERS:
        feedback.save(feedback.empty(), paths.feedback / name)
    with_feedback = store.standard_tags(paths, *paths.lineage_data(True))
    assert with_feedback["data_path"] == "data/splits+data/feedback/train+data/feedback/holdout"
    assert with_feedback["data_hash"] != splits_only["data_hash"] == store.folder_md5(paths.splits)
    (paths.feedback / "train" / "y.npy").write_bytes(b"changed")
    assert store.data_digest(paths, *paths.lineage_data(True)) != with_feedback["data_hash"]
    assert store.standard_tags(paths, *paths.lineage_data(False)) == splits_only


def test_a_run_role_is_one_tag_with_one_documented_set_of_values():
    assert store.role_tag("round") == {"role": "round"}
    with pytest.raises(ValueError, match=r"unknown run role 'curriculum_role'; expected one of \['compare'"):
        store.role_tag("curriculum_role")
    page = (Path(__file__).parents[3] / "docs" / "tracking.md").read_text()
    table = page.split("### Run roles", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^\| `([a-z_]+)` \| (.+) \|$", table, re.MULTILINE)[1:] == list(store.ROLES.items())
    used = {
        m
        for f in (Path(store.__file__).parent).glob("*.py")
        for m in re.findall(r"role_tag\(\"([a-z_]+)\"\)", f.read_text())
    }
    assert used | {"input_drift"} == set(store.ROLES)  # `rotmnist drift` names its role through a constant
