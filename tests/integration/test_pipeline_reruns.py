"""Tiny `dvc` runs that change the pipeline's state, each on its own copy of the session's trained workspace:
a first and a second promotion, `exp run --temp` into the same stores, a forced rerun, push then pull."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from mlflow import MlflowClient

from rotmnist.data.dataset import load_dataset
from tests.support.tiny_repo import assert_dvc_shows_every_metric, run, set_params

pytestmark = pytest.mark.slow  # on one worker under -n: tests/conftest.py SHARED_WORKER


def test_dvc_shows_every_metric_and_the_roc_curves_after_a_first_and_a_second_promotion(trained_repo):
    set_params(trained_repo / "params.yaml", {"monitor": {"threshold": 1.0, "angle_threshold": 1.0, "tolerance": 1.0}})
    run(["git", "commit", "-qam", "a gate every tiny model passes"], trained_repo)
    run(["dvc", "repro"], trained_repo)
    first = json.loads((trained_repo / "reports" / "monitor.json").read_text())
    assert first["registry"] == {"model_name": "rotmnist-cnn", "version": 1, "champion_after": 1}
    assert_dvc_shows_every_metric(trained_repo)

    run(["dvc", "exp", "run", "-S", "train.epochs=2"], trained_repo)
    second = json.loads((trained_repo / "reports" / "monitor.json").read_text())
    assert second["gate"]["passed"] is True
    assert second["registry"] == {
        "model_name": "rotmnist-cnn",
        "version": 2,
        "champion_before": 1,
        "compared_with": 1,
        "champion_after": 2,
    }
    assert set(second["champion_holdout"]["per_angle"]) == set(second["holdout"]["per_angle"])
    assert set(second["roc_auc"]["per_class"]) == {str(c) for c in range(10)}
    assert_dvc_shows_every_metric(trained_repo)

    proc = run(["dvc", "plots", "show", "--json"], trained_repo)
    rendered = json.loads(proc.stdout)
    assert "errors" not in rendered, rendered["errors"]
    roc = rendered["data"]["plots/monitor/roc.csv"][0]["content"]
    assert roc["title"]["text"] if isinstance(roc["title"], dict) else roc["title"]
    values = roc["data"]["values"]
    assert {v["field"] for v in values} == {f"class_{c}" for c in range(10)}
    assert 250 * 10 <= len(values) <= 300 * 10  # a few hundred points per class
    assert "plots/monitor/roc.png" in rendered["data"]


def _children(client: MlflowClient) -> list:
    """The trial runs of the sweep(s) in the `rotmnist` experiment."""
    experiment = client.get_experiment_by_name("rotmnist")
    return client.search_runs([experiment.experiment_id], "tags.mlflow.parentRunId != '' and tags.stage = 'tune'")


def _digests(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_exp_run_in_a_temporary_copy_logs_into_the_same_stores(trained_repo):
    run(["dvc", "repro", "monitor"], trained_repo)
    client = MlflowClient(f"sqlite:///{trained_repo / 'mlflow.db'}")
    parent = {r.data.tags["mlflow.parentRunId"] for r in _children(client)}

    # up to the gate: `compare`, a report nothing here reads, would train its seven models again
    run(["dvc", "exp", "run", "--temp", "-S", "tune.n_trials=3", "-S", "train.epochs=2", "monitor"], trained_repo)

    # The study's name ignores n_trials, so the journal at the repository root is extended by one trial
    # under the same parent run, and the new train run and model version land in the same MLflow store.
    children = _children(client)
    assert len(children) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == parent
    train_runs = client.search_runs([client.get_experiment_by_name("rotmnist").experiment_id], "tags.stage = 'train'")
    assert sorted(r.data.params["epochs"] for r in train_runs) == ["1", "2"]
    assert str(client.get_model_version_by_alias("rotmnist-cnn", "candidate").version) == "2"
    assert not list((trained_repo / ".dvc" / "tmp").rglob("mlflow.db"))
    assert not list((trained_repo / ".dvc" / "tmp").rglob("journal.log"))


def test_augment_is_byte_identical_after_forced_rerun(trained_repo):
    run(["dvc", "repro", "augment"], trained_repo)
    lock_before = (trained_repo / "dvc.lock").read_text()
    run(["dvc", "repro", "-f", "-s", "augment"], trained_repo)
    assert (trained_repo / "dvc.lock").read_text() == lock_before


def test_push_then_pull_restores_identical_files(trained_repo):
    run(["dvc", "repro", "split"], trained_repo)
    before = {d: _digests(trained_repo / "data" / d) for d in ("raw", "augmented", "splits")}
    run(["dvc", "push", "--with-deps", "split"], trained_repo)
    shutil.rmtree(trained_repo / ".dvc" / "cache")
    shutil.rmtree(trained_repo / "data")
    run(["dvc", "pull", "--with-deps", "split"], trained_repo)
    after = {d: _digests(trained_repo / "data" / d) for d in ("raw", "augmented", "splits")}
    assert after == before
    x = load_dataset(trained_repo / "data" / "splits" / "train").x
    assert x.dtype == np.uint8 and x.shape[1:] == (28, 28)
