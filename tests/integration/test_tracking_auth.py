"""`make server AUTH=1`: MLflow's basic-auth app refuses anonymous clients; the stages track through it with logins."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client

from rotmnist.paths import Paths
from rotmnist.tracking import registry, tune_storage
from rotmnist.tracking.store import ROLE_TAG
from tests.support.mlflow_server import ADMIN, mlflow_server
from tests.support.sweep import ROTMNIST, tiny_splits, workspace

pytestmark = pytest.mark.slow  # a tracking server and three stage processes

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"
ADMIN_PASSWORD = secrets.token_urlsafe(18)
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> Path:
    """The tiny train/val/test/holdout splits, made once for this module."""
    return tiny_splits(tmp_path_factory.mktemp("splits"))


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    """The basic-auth tracking server on a SQLite store, artifacts proxied into a local folder."""
    folder = tmp_path_factory.mktemp("auth-server")
    (folder / "artifacts").mkdir()
    with mlflow_server(f"sqlite:///{folder / 'server.db'}", folder / "artifacts", admin_password=ADMIN_PASSWORD) as url:
        yield url


def status(url: str, login: tuple[str, str] | None = None) -> tuple[int, str | None]:
    """The status of a GET and its WWW-Authenticate header, with HTTP basic credentials if given."""
    request = urllib.request.Request(url)
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("WWW-Authenticate")
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("WWW-Authenticate")


def add_user(server: str, monkeypatch, username: str) -> tuple[str, str]:
    """Create a user the way the docs say (MLflow's auth client, as the admin); return its login."""
    password = secrets.token_urlsafe(18)
    with monkeypatch.context() as admin:
        log_in(admin, (ADMIN, ADMIN_PASSWORD))
        get_app_client("basic-auth", tracking_uri=server).create_user(username, password)
    return username, password


def log_in(monkeypatch, login: tuple[str, str]) -> None:
    for name, value in zip(CREDENTIALS, login, strict=True):
        monkeypatch.setenv(name, value)


def test_anonymous_clients_and_wrong_passwords_get_401(server):
    assert status(f"{server}/health") == (200, None)  # the health check stays open, for load balancers
    assert status(f"{server}{SEARCH}") == (401, 'Basic realm="mlflow"')
    assert status(f"{server}{SEARCH}", (ADMIN, ADMIN_PASSWORD + "x"))[0] == 401
    assert status(f"{server}{SEARCH}", ("nobody", ADMIN_PASSWORD))[0] == 401
    assert status(f"{server}{SEARCH}", (ADMIN, ADMIN_PASSWORD))[0] == 200


def test_a_user_logs_runs_in_a_colleagues_experiment_but_cannot_delete_it(server, monkeypatch):
    """config/mlflow-auth.ini's default_permission is EDIT: a shared experiment and model, no deleting others'."""
    owner, colleague = add_user(server, monkeypatch, "owner"), add_user(server, monkeypatch, "colleague")
    log_in(monkeypatch, owner)
    experiment = MlflowClient(server).create_experiment("shared")
    log_in(monkeypatch, colleague)
    client = MlflowClient(server)
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "accuracy", 0.5)
    with pytest.raises(MlflowException, match="403"):
        client.delete_experiment(experiment)


def stage_env(server: str, login: tuple[str, str] | None) -> dict[str, str]:
    """The environment of a stage that tracks to `server`, logged in as `login` if given."""
    env = os.environ | {"TQDM_DISABLE": "1", "MLFLOW_TRACKING_URI": server}
    for name in ("ROTMNIST_STORE_ROOT", tune_storage.STORAGE_ENV, *CREDENTIALS):
        env.pop(name, None)
    return env | dict(zip(CREDENTIALS, login or (), strict=False))


def rotmnist(stage: str, ws: Paths, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the real CLI's `stage` in the workspace."""
    cmd = [ROTMNIST, stage]
    return subprocess.run(cmd, cwd=ws.root, env=env, capture_output=True, text=True, timeout=300)


def test_a_stage_without_a_login_stops_with_one_line_naming_the_401(tmp_path, splits, server):
    done = rotmnist("tune", workspace(tmp_path, splits, "anonymous"), stage_env(server, None))
    assert done.returncode == 1
    assert "401" in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in done.stderr


def test_tune_train_and_monitor_track_through_the_server_with_a_users_login(tmp_path, splits, server, monkeypatch):
    """The CLI's stages, given MLFLOW_TRACKING_USERNAME/PASSWORD, log runs and register and promote the model."""
    analyst = add_user(server, monkeypatch, "analyst")
    ws = workspace(tmp_path, splits, "guarded", n_trials=2)
    params = yaml.safe_load((ws.root / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    params["monitor"] = {"model_name": "guarded", "threshold": 1.0, "angle_threshold": 1.0}
    params["latency"] = {"warmup": 2, "single_calls": 20, "batch_size": 32, "batch_calls": 2}
    (ws.root / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("tune", "train", "finetune", "monitor"):
        done = rotmnist(stage, ws, stage_env(server, analyst))
        assert done.returncode == 0, f"rotmnist {stage}:\n{done.stderr[-3000:]}"

    log_in(monkeypatch, analyst)
    client = MlflowClient(server)
    runs = client.search_runs([client.get_experiment_by_name("guarded").experiment_id], max_results=100)
    parents = [r.info.run_id for r in runs if r.data.tags.get(ROLE_TAG) == "sweep"]
    trials = [r for r in runs if "trial_number" in r.data.tags]
    assert len(parents) == 1 and [t.data.tags["mlflow.parentRunId"] for t in trials] == parents * 2
    train_run = json.loads((ws.models / "run.json").read_text())["run_id"]
    assert {r.info.run_id for r in runs} == {*parents, *(t.info.run_id for t in trials), train_run}
    champion = client.get_model_version_by_alias("guarded", registry.CHAMPION)
    assert champion.version == "1" and champion.run_id == train_run
    assert client.get_run(train_run).data.tags["gate"] == "passed"
