"""Several `rotmnist tune` processes on one study: PostgreSQL or a shared journal file, workers killed mid-trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from rotmnist.data.dataset import load_dataset
from rotmnist.paths import Paths
from rotmnist.tracking import tune as sweep
from rotmnist.tracking import tune_storage
from rotmnist.tracking.store import ROLE_TAG
from tests.support.postgres import fresh_database
from tests.support.sweep import ROTMNIST, TINY, tiny_splits, workspace

pytestmark = pytest.mark.slow  # each test starts several Python processes that train models

ERRORS = ("locked", "already finished", "Traceback", "UpdateFinishedTrialError")


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> Path:
    return tiny_splits(tmp_path_factory.mktemp("splits"))


def start_workers(ws: Paths, n: int, storage: str, tracking: str) -> list[subprocess.Popen]:
    env = os.environ | {
        "TQDM_DISABLE": "1",
        tune_storage.STORAGE_ENV: storage,
        "MLFLOW_TRACKING_URI": tracking,
        "PYTHONPATH": os.pathsep.join([str(Path(sweep.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("ROTMNIST_STORE_ROOT", None)
    return [
        subprocess.Popen(
            [ROTMNIST, "tune"], cwd=ws.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]


def finish(workers: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    """Wait for every worker; return their stderr."""
    return [w.communicate(timeout=timeout)[1] for w in workers]


def load_study(ws: Paths, storage: str) -> optuna.Study:
    names = optuna.get_all_study_names(storage=tune_storage.open_storage(storage, ws))
    prefix = yaml.safe_load((ws.root / "params.yaml").read_text())["tune"]["study_name"]
    mine = [n for n in names if n.startswith(f"{prefix}-")]
    assert len(mine) == 1, names
    return optuna.load_study(study_name=mine[0], storage=tune_storage.open_storage(storage, ws))


def child_runs(tracking: str, experiment: str) -> list:
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000) if "trial_number" in r.data.tags]


def assert_one_study_one_parent(ws: Paths, storage: str, tracking: str, name: str, workers: int) -> optuna.Study:
    """Every trial once, n_trials..n_trials+workers-1 finished, one MLflow child run per trial under one parent."""
    study = load_study(ws, storage)
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers)))
    n_trials = yaml.safe_load((ws.root / "params.yaml").read_text())["tune"]["n_trials"]
    assert n_trials <= tune_storage.count_finished(study) <= n_trials + workers - 1
    children = child_runs(tracking, name)
    by_trial = sorted(int(r.data.tags["trial_number"]) for r in children)
    assert by_trial == numbers  # one child run per trial, none twice
    parent = study.user_attrs[sweep.PARENT_ATTR]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent}
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name(name)
    parents = client.search_runs([exp.experiment_id], filter_string=f"tags.{ROLE_TAG} = 'sweep'")
    assert [p.info.run_id for p in parents] == [parent]
    return study


def mid_trial(study_of, pid: int) -> bool:
    """Whether the worker with `pid` is training a trial (its MLflow run started), after one trial finished."""
    try:
        study = study_of()
    except (AssertionError, KeyError, ValueError):
        return False
    trials = study.get_trials(deepcopy=False)
    running = [
        t
        for t in trials
        if t.state == TrialState.RUNNING and t.user_attrs.get("pid") == pid and "mlflow_run_id" in t.user_attrs
    ]
    return bool(running) and any(t.state == TrialState.COMPLETE for t in trials)


def kill_mid_trial(workers: list[subprocess.Popen], study_of) -> float:
    """SIGKILL the first worker while it runs a trial; return the time of death."""
    victim, deadline = workers[0], time.monotonic() + 240
    while time.monotonic() < deadline and victim.poll() is None:
        if mid_trial(study_of, victim.pid):
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            return time.time()
        time.sleep(0.2)
    raise AssertionError("the worker was never seen mid-trial")


def assert_killed_trial_retried(study: optuna.Study, tracking: str, killed_at: float) -> float:
    """The killed trial is FAIL, its MLflow run KILLED; a survivor ran its params again. Returns death→retry s."""
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1, [(t.number, t.state, t.datetime_start, t.datetime_complete) for t in study.trials]
    retries = [t for t in study.trials if tune_storage.retry_of(t) == failed[0].number]
    assert len(retries) == 1 and retries[0].params == failed[0].params
    assert retries[0].state == TrialState.COMPLETE
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    run = MlflowClient(tracking).get_run(failed[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags[tune_storage.STATE_TAG] == "failed"
    return retries[0].datetime_start.timestamp() - killed_at


@pytest.fixture
def pg(postgres) -> dict[str, str]:
    """Fresh, empty databases for each store: nothing made in advance, the workers race to make the tables."""
    return fresh_stores(postgres, f"t{time.monotonic_ns()}")


def fresh_stores(postgres: dict[str, str], suffix: str) -> dict[str, str]:
    return {store: fresh_database(postgres[store], f"{store}_{suffix}") for store in ("optuna", "mlflow")}


# One round by default; `pytest -m stress` repeats the race twice more.
@pytest.mark.parametrize(
    "round_", [1, pytest.param(2, marks=pytest.mark.stress), pytest.param(3, marks=pytest.mark.stress)]
)
def test_three_workers_started_together_on_an_empty_postgresql_share_one_study_and_one_parent_run(
    tmp_path, splits, postgres, round_
):
    stores = fresh_stores(postgres, f"round{round_}")
    ws = workspace(tmp_path, splits, "pg3")
    workers = start_workers(ws, 3, stores["optuna"], stores["mlflow"])
    errors = finish(workers)
    assert [w.returncode for w in workers] == [0, 0, 0], errors
    assert not [e for e in errors if any(word in e for word in ERRORS)], errors
    study = assert_one_study_one_parent(ws, stores["optuna"], stores["mlflow"], "pg3", 3)
    assert len({t.user_attrs["pid"] for t in study.trials}) > 1  # the work was shared


def test_a_worker_killed_on_postgresql_has_its_trial_failed_by_heartbeat_and_retried(tmp_path, splits, pg):
    name = "pgkill"
    # trials enough that the survivor still starts one when the grace period after the death is over
    ws = workspace(tmp_path, splits, name, epochs=40, n_trials=12)
    workers = start_workers(ws, 2, pg["optuna"], pg["mlflow"])
    killed_at = kill_mid_trial(workers, lambda: load_study(ws, pg["optuna"]))
    errors = finish(workers[1:])
    assert workers[1].returncode == 0, errors
    study = assert_one_study_one_parent(ws, pg["optuna"], pg["mlflow"], name, 2)
    delay = assert_killed_trial_retried(study, pg["mlflow"], killed_at)
    # failed once its last heartbeat (at most an interval before the death) was a grace period old, not before
    assert delay >= TINY["tune"]["grace_period"] - TINY["tune"]["heartbeat_interval"]
    print(f"death to retry on PostgreSQL: {delay:.1f} s")


def test_a_worker_killed_on_a_shared_journal_file_has_its_trial_retried(tmp_path, splits, empty_store):
    import shutil

    name = "jkill"
    ws = workspace(tmp_path, splits, name, epochs=40, n_trials=6)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    tracking, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "shared" / "journal.log")
    workers = start_workers(ws, 2, storage, tracking)
    killed_at = kill_mid_trial(workers, lambda: load_study(ws, storage))
    errors = finish(workers[1:])
    assert workers[1].returncode == 0, errors
    study = assert_one_study_one_parent(ws, storage, tracking, name, 2)
    delay = assert_killed_trial_retried(study, tracking, killed_at)
    print(f"death to retry on a journal file: {delay:.1f} s")


# ---- an MLflow tracking server ----------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request, tmp_path) -> str:
    """A tracking server on the SQLite file or on PostgreSQL, artifacts proxied into a local folder."""
    from tests.support.mlflow_server import mlflow_server

    if request.param == "sqlite":
        backend = f"sqlite:///{tmp_path / 'server.db'}"
    else:
        backend = request.getfixturevalue("postgres")["registry"]
    (tmp_path / "server-artifacts").mkdir()
    with mlflow_server(backend, tmp_path / "server-artifacts") as url:
        yield url


def test_tune_train_and_monitor_track_through_a_tracking_server(tmp_path, splits, monkeypatch, server):
    """Runs, nested trials, the registered version with its tags and the champion alias arrive through HTTP."""
    from rotmnist.config import config_from_dict
    from rotmnist.stages import finetune, train, tune
    from rotmnist.stages import monitor as monitor_stage
    from rotmnist.tracking import registry

    ws = workspace(tmp_path / "ws", splits, "served")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.delenv(tune_storage.STORAGE_ENV, raising=False)
    monkeypatch.delenv("ROTMNIST_STORE_ROOT", raising=False)
    params = yaml.safe_load((ws.root / "params.yaml").read_text())
    params["tune"]["n_trials"] = 2
    params["train"]["epochs"] = 1
    params["monitor"] = {"model_name": "served", "threshold": 1.0, "angle_threshold": 1.0}
    config = config_from_dict(params)
    tune.main(config, ws)
    train.main(config, ws)
    finetune.main(config, ws)
    monitor_stage.main(config, ws)

    client = MlflowClient(server)
    exp = client.get_experiment_by_name("served")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "sweep"]
    trials = [r for r in runs if "trial_number" in r.data.tags]
    assert len(parents) == 1 and len(trials) == 2
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {parents[0].info.run_id}
    train_run = json.loads((ws.models / "run.json").read_text())["run_id"]
    assert client.get_run(train_run).data.tags["gate"] == "passed"
    version = client.get_model_version_by_alias("served", registry.CHAMPION)
    assert version.version == "1" and version.run_id == train_run
    assert version.tags["gate"] == "passed" and version.tags["training_run_id"] == train_run
    assert {"holdout_accuracy", "git_commit", "data_hash"} <= set(version.tags)
    assert client.get_model_version("served", "1").aliases  # the registry answers a version lookup
    assert not list((ws.root).glob("mlartifacts"))  # the server stored the artifacts, not the workspace
    champion = registry.load_champion("served")
    holdout = load_dataset(ws.split("holdout"))
    assert champion.version == "1" and champion.predict(holdout.x).shape == (len(holdout),)
