"""Stages `tune` and `train` on tiny splits, with real MLflow (SQLite in a temp folder) and Optuna (journal) stores."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import torch
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState
from scipy import ndimage

from rotmnist.config import config_from_dict
from rotmnist.data.dataset import Dataset, load_dataset, save_dataset
from rotmnist.errors import PipelineError
from rotmnist.learning.model import load_pipeline_model, predict_labels
from rotmnist.paths import Paths
from rotmnist.spec import normalize_spec
from rotmnist.stages import train, tune
from rotmnist.tracking import store, tune_space, tune_storage
from rotmnist.tracking import tune as sweep
from rotmnist.tracking.store import ROLE_TAG
from tests.support.helpers import tiny_mnist

ANGLES = (0, -30, 30)
EXPERIMENT = "tt"
TINY = {
    "tune": {
        "n_trials": 3,
        "epochs": 2,
        "train_fraction": 0.5,
        "val_fraction": 1.0,
        "pruner": "none",
        "space": {
            "lr": [0.005, 0.01],
            "batch_size": [32],
            "dropout": [0.0, 0.1],
            "cnn": {"blocks": [1, 2], "channels": [4, 8], "dense": [32]},
        },
    },
    "train": {"epochs": 2, "shift": 0, "num_threads": 1, "val_every": 1},
    "mlflow": {"experiment": EXPERIMENT},
}


def config(**sections):
    merged = {k: TINY.get(k, {}) | sections.get(k, {}) for k in {*TINY, *sections}}
    return config_from_dict(merged)


def rotated(x: np.ndarray, y: np.ndarray, first_source: int) -> Dataset:
    """Every image at every angle of ANGLES, with source ids from `first_source`."""
    xs = [x if a == 0 else ndimage.rotate(x, a, axes=(2, 1), reshape=False, order=1) for a in ANGLES]
    n = len(x)
    return Dataset(
        x=np.concatenate(xs).astype(np.uint8),
        y=np.tile(y, len(ANGLES)),
        source_id=np.tile(np.arange(first_source, first_source + n, dtype=np.int32), len(ANGLES)),
        angle=np.repeat(np.array(ANGLES, np.int8), n),
        mnist_split=np.zeros(n * len(ANGLES), np.int8),
    )


@pytest.fixture(scope="module")
def splits(tmp_path_factory, empty_store) -> Path:
    """Tiny train/val/test splits and an initialised, empty MLflow store (both made once, copied per test)."""
    folder = tmp_path_factory.mktemp("splits")
    x, y, x_test, y_test = tiny_mnist(n_train=300, n_test=60, seed=0)
    save_dataset(rotated(x[:240], y[:240], 0), folder / "data" / "splits" / "train")
    save_dataset(rotated(x[240:], y[240:], 240), folder / "data" / "splits" / "val")
    save_dataset(rotated(x_test, y_test, 300), folder / "data" / "splits" / "test")
    shutil.copy(empty_store, folder / "mlflow.db")
    return folder


@pytest.fixture
def ws(tmp_path, monkeypatch, splits) -> Paths:
    shutil.copytree(splits, tmp_path, dirs_exist_ok=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv(tune_storage.STORAGE_ENV, raising=False)
    monkeypatch.delenv("ROTMNIST_STORE_ROOT", raising=False)
    before = torch.get_num_threads()
    yield Paths(root=tmp_path, store_root=tmp_path)
    torch.set_num_threads(before)


def runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], max_results=1000)


def study_of(ws: Paths, cfg) -> optuna.Study:
    name = json.loads(ws.report("tune").read_text())["study"]
    return optuna.load_study(study_name=name, storage=tune_storage.open_storage(str(ws.optuna_journal), ws))


@pytest.mark.slow  # trains real models in an Optuna sweep
def test_tune_logs_one_child_run_per_trial_and_train_logs_a_model_that_scores_any_batch(ws):
    cfg = config()
    tune.main(cfg, ws)
    client = MlflowClient()
    study = study_of(ws, cfg)
    assert len(study.trials) == 3 and tune_storage.count_finished(study) == 3
    all_runs = runs(client)
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in all_runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == len(study.trials)
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert parent.data.tags["git_commit"] == "unknown" and parent.data.tags["data_hash"].endswith(".dir")
    assert sorted(int(c.data.tags["trial_number"]) for c in children) == [0, 1, 2]
    for child in children:
        assert child.data.tags["state"] == "complete" and child.info.status == "FINISHED"
        assert child.info.run_name.startswith(f"t00{child.data.tags['trial_number']}-cnn-b")
        assert {"family", "blocks", "channels", "lr", "weight_decay", "batch_size", "epochs"} <= set(child.data.params)
        assert {"latency_ms_p50", "latency_ms_p99", "batch_images_per_second", "n_params"} <= set(child.data.metrics)
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert [m.step for m in history] == [1, 2]
        assert child.data.tags["data_hash"] == parent.data.tags["data_hash"]
        assert [d.dataset.name for d in child.inputs.dataset_inputs] == ["train-sweep", "val-sweep"]
    trial_runs = {t.user_attrs["mlflow_run_id"] for t in study.trials}
    assert trial_runs == {c.info.run_id for c in children}
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")}
    assert {"optuna/optimization_history.png", "optuna/param_importances.png", "optuna/trials.csv"} <= artifacts

    best = json.loads((ws.models / "best_params.json").read_text())
    summary = json.loads(ws.report("tune").read_text())
    assert best["val_accuracy"] == pytest.approx(study.best_value) and best["trial"] == study.best_trial.number
    assert summary["trials"] == {"complete": 3, "pruned": 0, "failed": 0}
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(study.best_value)

    train.main(cfg, ws)
    ref = json.loads((ws.models / "run.json").read_text())
    assert set(ref) == {"run_id", "model_uri", "experiment_id", "spec", "pooling", "tracking_uri"}
    assert ref["spec"] == normalize_spec(best["spec"])
    assert ref["pooling"] == {"orientations": cfg.model.orientations, "below": cfg.model.pool_below}
    run = client.get_run(ref["run_id"])
    assert run.data.tags["stage"] == "train" and run.data.tags["tuned_by"] == parent.info.run_id
    assert len(client.get_metric_history(ref["run_id"], "val_accuracy")) == 2
    metrics = json.loads(ws.report("train").read_text())
    assert set(metrics["test"]["per_angle"]) == {"-30", "0", "30"} and len(metrics["test"]["per_class"]) == 10
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)
    for name in ("curves.csv", "test_angle_accuracy.csv", "test_class_accuracy.csv"):
        assert (ws.plots / "train" / name).is_file()
    assert (ws.plots / "train" / "curves.csv").read_text().splitlines()[0].startswith("epoch,train_loss")

    module, _ = load_pipeline_model(ws.models / "model.pt", ws.models / "run.json")  # pooling as train logged it
    assert run.data.params["pooling_below"] == str(cfg.model.pool_below)
    test = load_dataset(ws.split("test"))
    loaded = mlflow.pyfunc.load_model(ref["model_uri"])
    for n in (1, 7, 33):
        probs = np.asarray(loaded.predict(test.x[:n].astype(np.float32)))
        assert probs.shape == (n, 10)
        np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
        assert np.array_equal(probs.argmax(1), predict_labels(module, test.x[:n]))
    accuracy = float(np.mean(predict_labels(module, test.x) == test.y))
    assert accuracy == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)


@pytest.mark.slow  # trains real models in an Optuna sweep
def test_pruned_trials_are_marked(ws):
    cfg = config(tune={"n_trials": 2, "pruner": "threshold", "prune_below": 1.01})  # nothing reaches 101 %
    tune.main(cfg, ws)
    study = study_of(ws, cfg)
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.PRUNED]
    children = [r for r in runs(MlflowClient()) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and {c.data.tags["state"] for c in children} == {"pruned"}
    for child in children:
        assert len(MlflowClient().get_metric_history(child.info.run_id, "val_accuracy")) == 1  # stopped after epoch 1
    summary = json.loads(ws.report("tune").read_text())
    assert summary["trials"] == {"complete": 0, "pruned": 2, "failed": 0}
    # With no complete trial, the best is the one whose last report was highest.
    last = {t.number: t.intermediate_values[max(t.intermediate_values)] for t in study.trials}
    best = json.loads((ws.models / "best_params.json").read_text())
    assert best["trial"] == max(last, key=last.get) and best["val_accuracy"] == pytest.approx(max(last.values()))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow  # trains real models in an Optuna sweep
def test_a_resumed_study_neither_loses_nor_duplicates_trials(ws):
    tune.main(config(tune={"n_trials": 2}), ws)
    cfg = config(tune={"n_trials": 3})
    study = study_of(ws, cfg)
    parent_id = study.user_attrs[sweep.PARENT_ATTR]
    # What a process killed mid-trial leaves: a RUNNING trial of a dead pid, and a RUNNING child run.
    store.configure_mlflow(cfg, ws)
    trial = study.ask()
    tune_space.suggest(trial, cfg.tune)
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", dead_pid())
    client = MlflowClient()
    killed = client.create_run(
        client.get_experiment_by_name(EXPERIMENT).experiment_id, tags={"mlflow.parentRunId": parent_id}
    )
    trial.set_user_attr("mlflow_run_id", killed.info.run_id)

    tune.main(cfg, ws)
    study = study_of(ws, cfg)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[3].params == study.trials[2].params  # the killed trial's params, retried
    assert tune_storage.retry_of(study.trials[3]) == 2
    children = [r for r in runs(client) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == len(study.trials) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent_id}
    killed = client.get_run(killed.info.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["state"] == "failed"
    assert json.loads(ws.report("tune").read_text())["trials"] == {"complete": 3, "pruned": 0, "failed": 1}

    tune.main(cfg, ws)  # nothing left to do: no new trial, no new run
    assert len(study_of(ws, cfg).trials) == 4
    assert len(runs(client)) == 5


def test_sqlite_storage_from_the_environment_is_refused(ws, monkeypatch):
    monkeypatch.setenv(tune_storage.STORAGE_ENV, f"sqlite:///{ws.root / 'optuna.db'}")
    with pytest.raises(PipelineError, match="SQLite is refused"):
        tune.main(config(), ws)
    assert not (ws.root / "optuna.db").exists()


def test_train_needs_the_best_params_of_tune(ws):
    with pytest.raises(PipelineError, match="run `rotmnist tune` first"):
        train.main(config(), ws)


def trial_running_after_one_finished(ws: Paths) -> bool:
    if not ws.optuna_journal.exists():
        return False
    storage = tune_storage.open_storage(str(ws.optuna_journal), ws)
    for summary in optuna.get_all_study_summaries(storage):
        trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
        # running: its params all sampled and its MLflow run started
        running = [t for t in trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
        if running and any(t.state == TrialState.COMPLETE for t in trials):
            return True
    return False


@pytest.mark.slow
def test_a_sweep_killed_mid_trial_and_restarted_ends_with_exactly_n_trials(ws):
    """The real thing: `rotmnist tune` SIGKILLed during a trial, then run again."""
    (ws.root / "dvc.yaml").write_text("stages: {}\n")
    params = {k: dict(v) for k, v in TINY.items()} | {"tune": TINY["tune"] | {"n_trials": 3, "epochs": 4}}
    (ws.root / "params.yaml").write_text(yaml.safe_dump(params))
    env = os.environ | {"TQDM_DISABLE": "1"}
    cmd = [str(Path(sys.executable).parent / "rotmnist"), "tune"]
    proc = subprocess.Popen(cmd, cwd=ws.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not trial_running_after_one_finished(ws):
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)  # at once: a trial was running a moment ago
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    # What the dead process left in the journal: the trial it was running when the kill landed.
    storage = tune_storage.open_storage(str(ws.optuna_journal), ws)
    (summary,) = optuna.get_all_study_summaries(storage)
    left = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(states=(TrialState.RUNNING,))
    assert len(left) == 1, "the kill did not land during a trial"
    subprocess.run(cmd, cwd=ws.root, env=env, check=True, capture_output=True)
    summary = json.loads(ws.report("tune").read_text())
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == 3
    study = study_of(ws, config())
    assert tune_storage.count_finished(study) == 3
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    # the trial the kill interrupted is marked failed and its params were tried again
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert [t.number for t in failed] == [left[0].number]
    retries = [t for t in study.trials if tune_storage.retry_of(t) == failed[0].number]
    assert len(retries) == 1 and retries[0].params == failed[0].params


def test_a_study_keeps_its_parent_run_and_replaces_one_that_was_deleted(ws):
    store.configure_mlflow(config(), ws)
    study = optuna.create_study(study_name="s", storage=optuna.storages.InMemoryStorage())
    first = sweep._parent_run(study, "s", {"study": "s"})
    assert sweep._parent_run(study, "s", {"study": "s"}) == first  # a second worker adopts the study's parent
    MlflowClient().delete_run(first)
    second = sweep._parent_run(study, "s", {"study": "s"})
    assert second != first and study.user_attrs[sweep.PARENT_ATTR] == second
    sweeps = [r for r in runs(MlflowClient()) if r.data.tags.get(ROLE_TAG) == "sweep"]
    assert [r.info.run_id for r in sweeps] == [second]
