"""The sweep's pieces: storage selection, study naming, the search space, pruners, and releasing dead trials."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from rotmnist.config import Config, config_from_dict
from rotmnist.errors import ConfigError, PipelineError
from rotmnist.learning import training
from rotmnist.paths import Paths
from rotmnist.spec import normalize_spec
from rotmnist.tracking import tune as sweep

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def paths(tmp_path, monkeypatch) -> Paths:
    monkeypatch.delenv(sweep.STORAGE_ENV, raising=False)
    return Paths(root=tmp_path / "exp-copy", store_root=tmp_path)


def test_storage_url_precedence(paths, monkeypatch):
    assert sweep.storage_url(Config(), paths) == str(paths.optuna_journal)
    configured = config_from_dict({"tune": {"storage": "postgresql://u:pw@db/optuna"}})
    assert sweep.storage_url(configured, paths) == "postgresql://u:pw@db/optuna"
    monkeypatch.setenv(sweep.STORAGE_ENV, "/shared/journal.log")
    assert sweep.storage_url(configured, paths) == "/shared/journal.log"


@pytest.mark.parametrize("url", ["sqlite:///optuna.db", "SQLITE:////abs/optuna.db"])
def test_sqlite_storage_is_refused_with_the_reason(paths, url):
    with pytest.raises(PipelineError, match="SQLite is refused, since parallel workers lock or corrupt it"):
        sweep.open_storage(url, paths)
    with pytest.raises(ConfigError, match=r"tune\.storage: Optuna storage .*SQLite is refused"):
        config_from_dict({"tune": {"storage": url}})


def test_unknown_storage_schemes_are_refused(paths):
    with pytest.raises(PipelineError, match=r"'redis://host' is not supported; use a journal file path"):
        sweep.open_storage("redis://host", paths)


def test_journal_paths_resolve_at_the_store_root(paths):
    storage = sweep.open_storage("optuna/other.log", paths)
    assert isinstance(storage, optuna.storages.JournalStorage)
    optuna.create_study(study_name="s", storage=storage)
    assert (paths.store_root / "optuna" / "other.log").is_file()
    optuna.create_study(study_name="s", storage=sweep.open_storage(f"journal:{paths.store_root / 'j2.log'}", paths))
    assert (paths.store_root / "j2.log").is_file()


def test_study_name_changes_with_the_objective_but_not_with_the_budget():
    base = sweep.study_name(Config(), "abc.dir")
    assert base.startswith("rotmnist-") and base == sweep.study_name(Config(), "abc.dir")
    assert sweep.study_name(config_from_dict({"tune": {"n_trials": 50}}), "abc.dir") == base
    assert sweep.study_name(config_from_dict({"tune": {"storage": "x.log"}}), "abc.dir") == base
    assert sweep.study_name(Config(), "other.dir") != base
    assert sweep.study_name(config_from_dict({"tune": {"epochs": 3}}), "abc.dir") != base
    assert sweep.study_name(config_from_dict({"tune": {"space": {"batch_size": [64]}}}), "abc.dir") != base
    assert sweep.study_name(config_from_dict({"train": {"shift": 0}}), "abc.dir") != base
    assert sweep.study_name(config_from_dict({"train": {"epochs": 1}}), "abc.dir") == base  # train-only key


@pytest.mark.parametrize(
    ("params", "spec_keys"),
    [
        (
            {"family": "cnn", "blocks": 3, "channels": 16, "kernel": 5, "convs_per_block": 1, "batch_norm": True}
            | {"dense": 64, "dropout": 0.1},
            {"family", "blocks", "channels", "kernel", "convs_per_block", "batch_norm", "dense", "dropout"},
        ),
        ({"family": "mlp", "layers": 2, "width": 512, "dropout": 0.2}, {"family", "layers", "width", "dropout"}),
        ({"family": "logreg"}, {"family"}),
    ],
)
def test_suggest_samples_only_the_familys_params(params, spec_keys):
    config = config_from_dict({"tune": {"families": ["cnn", "mlp", "logreg"]}})
    hyper = {"lr": 0.002, "weight_decay": 1e-4, "batch_size": 128}
    spec, sampled = sweep.suggest(optuna.trial.FixedTrial(params | hyper), config.tune)
    assert set(spec) == spec_keys and spec == params and sampled == hyper
    normalize_spec(spec)  # a valid model spec
    assert sweep.params_to_choice(params | hyper) == (spec, hyper)


def test_suggest_stays_inside_the_configured_space():
    config = config_from_dict(
        {"tune": {"space": {"lr": [0.001, 0.002], "batch_size": [64], "cnn": {"blocks": [3], "kernel": [5]}}}}
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        spec, hyper = sweep.suggest(trial, config.tune)
        assert spec["blocks"] == 3 and spec["kernel"] == 5 and spec["channels"] == 16
        assert spec["convs_per_block"] == 1 and spec["batch_norm"] is True
        assert 0.001 <= hyper["lr"] <= 0.002 and hyper["batch_size"] == 64
        study.tell(trial, 0.5)


def test_recipe_joins_tuned_params_and_the_shared_training_recipe():
    config = config_from_dict({"train": {"shift": 1, "label_smoothing": 0.1, "schedule": "cosine"}})
    hp = training.recipe(config, {"lr": 0.01, "weight_decay": 0.0, "batch_size": 64}, epochs=4)
    assert (hp.lr, hp.batch_size, hp.epochs, hp.shift, hp.label_smoothing, hp.schedule) == (
        0.01,
        64,
        4,
        1,
        0.1,
        "cosine",
    )


def test_run_names_say_the_family_and_key_params():
    spec = {"family": "cnn", "blocks": 2, "channels": 16, "kernel": 3, "dense": 128}
    assert sweep.run_name(3, spec, {"lr": 0.003, "batch_size": 256}) == "t003-cnn-b2-c16-k3-d128-lr3e-03-bs256"
    assert sweep.run_name(None, {"family": "mlp"}, {"lr": 0.01, "batch_size": 64}) == "mlp-2x256-lr1e-02-bs64"


def test_make_pruner():
    assert isinstance(sweep.make_pruner(Config().tune), optuna.pruners.MedianPruner)
    threshold = config_from_dict({"tune": {"pruner": "threshold", "prune_below": 0.5}}).tune
    assert isinstance(sweep.make_pruner(threshold), optuna.pruners.ThresholdPruner)
    assert isinstance(sweep.make_pruner(config_from_dict({"tune": {"pruner": "none"}}).tune), optuna.pruners.NopPruner)


@pytest.mark.parametrize(
    ("tune_keys", "message"),
    [
        ({"families": []}, "families must name at least one of"),
        ({"families": ["cnn", "cnn"]}, "families must not repeat"),
        ({"families": ["svm"]}, "tune.families.0"),
        ({"space": {"cnn": {"blocks": [4]}}}, r"choices \[4\] are not allowed; use any of \[1, 2, 3\]"),
        ({"space": {"lr": [0.0, 0.1]}}, "lr must be"),
        ({"space": {"dropout": [0.2, 1.0]}}, "dropout must be"),
        ({"space": {"batch_size": []}}, "non-empty list of distinct choices"),
        ({"space": {"mlp": {"depth": [1]}}}, "tune.space.mlp.depth: unknown key"),
        ({"pruner": "hyperband"}, "tune.pruner"),
        ({"n_trials": 0}, "tune.n_trials"),
        ({"train_fraction": 0.0}, "tune.train_fraction"),
    ],
)
def test_bad_tune_params_are_named(tune_keys, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"tune": tune_keys})


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_release_dead_trials_fails_and_requeues_trials_of_dead_processes_and_silent_workers(tmp_path):
    storage = sweep.open_storage(str(tmp_path / "journal.log"), Paths(root=tmp_path, store_root=tmp_path))
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
            trial.set_user_attr(sweep.HEARTBEAT_ATTR, beat)
        trials[name] = trial.number
    done = study.ask()
    study.tell(done, 0.9)

    assert sweep.release_dead_trials(study, grace_period=30) == [trials["dead"], trials["remote-silent"]]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[trials["dead"]] == states[trials["remote-silent"]] == TrialState.FAIL
    assert {states[trials[n]] for n in ("alive", "remote", "remote-beating")} == {TrialState.RUNNING}
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [sweep.retry_of(t) for t in waiting] == [trials["dead"], trials["remote-silent"]]
    assert [t.params for t in waiting] == [study.trials[trials[n]].params for n in ("dead", "remote-silent")]
    assert all("pid" not in t.user_attrs for t in waiting)  # a retry does not inherit the dead worker's identity
    assert sweep.count_finished(study) == 1
    assert sweep.release_dead_trials(study, grace_period=30) == []  # idempotent


def test_a_retried_trial_whose_worker_dies_again_is_not_retried_twice(tmp_path):
    storage = sweep.open_storage(str(tmp_path / "journal.log"), Paths(root=tmp_path, store_root=tmp_path))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for _ in range(2):  # the original, then its retry, each killed
        trial = study.ask()
        trial.suggest_float("lr", 0.001, 0.01)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", dead_pid())
        assert sweep.release_dead_trials(study, grace_period=30) == [trial.number]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert sweep.retry_of(study.trials[1]) == 0


def test_a_heartbeat_is_recorded_while_the_block_runs_and_stops_after(tmp_path):
    storage = sweep.open_storage(str(tmp_path / "journal.log"), Paths(root=tmp_path, store_root=tmp_path))
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    with sweep.heartbeat(trial, interval=0.05):
        first = study.trials[0].user_attrs[sweep.HEARTBEAT_ATTR]
        time.sleep(0.3)
        later = study.trials[0].user_attrs[sweep.HEARTBEAT_ATTR]
    assert later > first
    time.sleep(0.2)
    assert study.trials[0].user_attrs[sweep.HEARTBEAT_ATTR] == later


def test_summary_falls_back_to_the_best_pruned_trial_when_none_completed():
    study = optuna.create_study(direction="maximize")
    for value in (0.3, 0.6):
        trial = study.ask({"family": optuna.distributions.CategoricalDistribution(["logreg"])})
        for name, v in (("lr", 0.01), ("weight_decay", 0.0), ("batch_size", 64)):
            trial.suggest_categorical(name, [v])
        trial.report(value / 2, 1)
        trial.report(value, 2)
        study.tell(trial, state=TrialState.PRUNED)
    result = sweep._summarise(study, "parent")
    assert result.value == 0.6 and result.best_trial == 1 and result.spec == {"family": "logreg"}
    assert result.counts == {"complete": 0, "pruned": 2, "failed": 0}
    with pytest.raises(PipelineError, match="no trial completed"):
        sweep._summarise(optuna.create_study(direction="maximize"), "parent")
