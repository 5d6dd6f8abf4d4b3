"""The sweep's storage: selection, study naming, pruners, heartbeats and releasing dead trials."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from rotmnist.config import Config, config_from_dict
from rotmnist.errors import ConfigError, PipelineError
from rotmnist.paths import Paths
from rotmnist.tracking import tune_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def paths(tmp_path, monkeypatch) -> Paths:
    monkeypatch.delenv(tune_storage.STORAGE_ENV, raising=False)
    return Paths(root=tmp_path / "exp-copy", store_root=tmp_path)


def test_storage_url_precedence(paths, monkeypatch):
    assert tune_storage.storage_url(Config(), paths) == str(paths.optuna_journal)
    configured = config_from_dict({"tune": {"storage": "postgresql://u:pw@db/optuna"}})
    assert tune_storage.storage_url(configured, paths) == "postgresql://u:pw@db/optuna"
    monkeypatch.setenv(tune_storage.STORAGE_ENV, "/shared/journal.log")
    assert tune_storage.storage_url(configured, paths) == "/shared/journal.log"


@pytest.mark.parametrize("url", ["sqlite:///optuna.db", "SQLITE:////abs/optuna.db"])
def test_sqlite_storage_is_refused_with_the_reason(paths, url):
    with pytest.raises(PipelineError, match="SQLite is refused, since parallel workers lock or corrupt it"):
        tune_storage.open_storage(url, paths)
    with pytest.raises(ConfigError, match=r"tune\.storage: Optuna storage .*SQLite is refused"):
        config_from_dict({"tune": {"storage": url}})


def test_unknown_storage_schemes_are_refused(paths):
    with pytest.raises(PipelineError, match=r"'redis://host' is not supported; use a journal file path"):
        tune_storage.open_storage("redis://host", paths)


def test_journal_paths_resolve_at_the_store_root(paths):
    storage = tune_storage.open_storage("optuna/other.log", paths)
    assert isinstance(storage, optuna.storages.JournalStorage)
    optuna.create_study(study_name="s", storage=storage)
    assert (paths.store_root / "optuna" / "other.log").is_file()
    optuna.create_study(
        study_name="s", storage=tune_storage.open_storage(f"journal:{paths.store_root / 'j2.log'}", paths)
    )
    assert (paths.store_root / "j2.log").is_file()


def test_study_name_changes_with_the_objective_but_not_with_the_budget():
    base = tune_storage.study_name(Config(), "abc.dir")
    assert base.startswith("rotmnist-") and base == tune_storage.study_name(Config(), "abc.dir")
    assert tune_storage.study_name(config_from_dict({"tune": {"n_trials": 50}}), "abc.dir") == base
    assert tune_storage.study_name(config_from_dict({"tune": {"storage": "x.log"}}), "abc.dir") == base
    assert tune_storage.study_name(Config(), "other.dir") != base
    assert tune_storage.study_name(config_from_dict({"tune": {"epochs": 3}}), "abc.dir") != base
    assert tune_storage.study_name(config_from_dict({"tune": {"space": {"batch_size": [64]}}}), "abc.dir") != base
    assert tune_storage.study_name(config_from_dict({"train": {"shift": 0}}), "abc.dir") != base
    assert tune_storage.study_name(config_from_dict({"train": {"epochs": 1}}), "abc.dir") == base  # train-only key


def test_make_pruner():
    assert isinstance(tune_storage.make_pruner(Config().tune), optuna.pruners.MedianPruner)
    threshold = config_from_dict({"tune": {"pruner": "threshold", "prune_below": 0.5}}).tune
    assert isinstance(tune_storage.make_pruner(threshold), optuna.pruners.ThresholdPruner)
    assert isinstance(
        tune_storage.make_pruner(config_from_dict({"tune": {"pruner": "none"}}).tune), optuna.pruners.NopPruner
    )


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_release_dead_trials_fails_and_requeues_trials_of_dead_processes_and_silent_workers(tmp_path):
    storage = tune_storage.open_storage(str(tmp_path / "journal.log"), Paths(root=tmp_path, store_root=tmp_path))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    here, now = socket.gethostname(), time.time()
    owners = {
        "dead": (here, dead_pid(), None),
        "alive": (here, os.getpid(), now - 60),  # a live local process counts, however old its last beat
        "remote": ("another-host", dead_pid(), None),  # no heartbeat: nothing tells it is dead
        "remote-beating": ("another-host", dead_pid(), now - 5),
        "remote-silent": ("another-host", dead_pid(), now - 60),
    }
    trials = {}
    for name, (host, pid, beat) in owners.items():
        trial = study.ask()
        trial.suggest_float("lr", 0.001, 0.01)
        trial.set_user_attr("host", host)
        trial.set_user_attr("pid", pid)
        trial.set_user_attr("mlflow_run_id", "")
        if beat is not None:
            trial.set_user_attr(tune_storage.HEARTBEAT_ATTR, beat)
        trials[name] = trial.number
    done = study.ask()
    study.tell(done, 0.9)

    assert tune_storage.release_dead_trials(study, grace_period=30) == [trials["dead"], trials["remote-silent"]]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[trials["dead"]] == states[trials["remote-silent"]] == TrialState.FAIL
    assert {states[trials[n]] for n in ("alive", "remote", "remote-beating")} == {TrialState.RUNNING}
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [tune_storage.retry_of(t) for t in waiting] == [trials["dead"], trials["remote-silent"]]
    assert [t.params for t in waiting] == [study.trials[trials[n]].params for n in ("dead", "remote-silent")]
    assert all("pid" not in t.user_attrs for t in waiting)  # a retry does not inherit the dead worker's identity
    assert tune_storage.count_finished(study) == 1
    assert tune_storage.release_dead_trials(study, grace_period=30) == []  # idempotent


def test_a_retried_trial_whose_worker_dies_again_is_not_retried_twice(tmp_path):
    storage = tune_storage.open_storage(str(tmp_path / "journal.log"), Paths(root=tmp_path, store_root=tmp_path))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for _ in range(2):  # the original, then its retry, each killed
        trial = study.ask()
        trial.suggest_float("lr", 0.001, 0.01)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", dead_pid())
        assert tune_storage.release_dead_trials(study, grace_period=30) == [trial.number]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert tune_storage.retry_of(study.trials[1]) == 0


def test_a_heartbeat_is_recorded_while_the_block_runs_and_stops_after(tmp_path):
    storage = tune_storage.open_storage(str(tmp_path / "journal.log"), Paths(root=tmp_path, store_root=tmp_path))
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()

    def beat() -> float:
        return study.trials[0].user_attrs[tune_storage.HEARTBEAT_ATTR]

    with tune_storage.heartbeat(trial, interval=0.05):
        first = later = beat()
        deadline = time.monotonic() + 30  # a bound for a regression only: the wait ends at the next beat
        while later == first and time.monotonic() < deadline:
            time.sleep(0.01)
            later = beat()
        assert later > first
    stopped = beat()
    assert stopped >= later  # at most one more beat, the one running as the block ended
    # The beating thread is joined on exit, so nothing records a heartbeat any more (no wait can prove that).
    assert not [t for t in threading.enumerate() if t.name == f"heartbeat-{trial.number}"]
    assert beat() == stopped
