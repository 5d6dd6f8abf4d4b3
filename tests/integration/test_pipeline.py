"""Tiny end-to-end `dvc repro` in a temporary git repository, then push / pull round-trip."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from mlflow import MlflowClient

from rotmnist.io import MNIST_TEST, load_dataset
from rotmnist.paths import SPLITS
from rotmnist.spec import CONFIGURATIONS
from tests.integration.conftest import run, set_params

pytestmark = pytest.mark.slow


def _digests(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_repro_builds_the_versioned_dataset_and_is_then_a_no_op(tiny_repo):
    run(["dvc", "repro"], tiny_repo)

    raw = load_dataset(tiny_repo / "data" / "raw")
    augmented = load_dataset(tiny_repo / "data" / "augmented")
    assert len(raw) == 360
    assert len(augmented) == 360 * 7
    splits = {name: load_dataset(tiny_repo / "data" / "splits" / name) for name in SPLITS}
    assert sum(len(s) for s in splits.values()) == len(augmented)
    sources = [set(s.source_id.tolist()) for s in splits.values()]
    assert sum(len(s) for s in sources) == len(set().union(*sources))  # no source in two splits
    assert set(splits["test"].source_id.tolist()) == set(raw.source_id[raw.mnist_split == MNIST_TEST].tolist())
    manifest = json.loads((tiny_repo / "metrics" / "split_manifest.json").read_text())
    assert manifest  # DVC metrics file present
    assert json.loads((tiny_repo / "metrics" / "data_profile.json").read_text())

    # tune -> train -> monitor logged into the repository's own stores
    for out in ("models/best_params.json", "models/run.json", "models/model.pt", "metrics/tune.json"):
        assert (tiny_repo / out).is_file(), out
    client = MlflowClient(f"sqlite:///{tiny_repo / 'mlflow.db'}")
    assert len(_children(client)) == 2  # tune.n_trials
    gate = json.loads((tiny_repo / "metrics" / "monitor.json").read_text())
    assert gate["registry"]["version"] == 1
    assert gate["gate"]["passed"] is False  # a one-epoch model on 180 digits: refused, and still fully shown
    assert_dvc_shows_every_metric(tiny_repo)
    assert str(client.get_model_version_by_alias("rotmnist-cnn", "candidate").version) == "1"

    # compare: every configuration in one table, the pipeline's row with the train run's record
    table = json.loads((tiny_repo / "metrics" / "compare.json").read_text())["configurations"]
    assert set(table) == set(CONFIGURATIONS)
    assert (
        table["pipeline"]["trained_by"]
        == f"train run {json.loads((tiny_repo / 'models' / 'run.json').read_text())['run_id']}"
    )
    trained = json.loads((tiny_repo / "metrics" / "train.json").read_text())
    assert table["pipeline"]["train_images"] == trained["images_trained"] > 0  # counted, not rate x seconds
    assert table["pipeline"]["train_seconds"] > 0
    shown = run(["dvc", "metrics", "show", "metrics/compare.json"], tiny_repo).stdout
    assert "configurations.cnn-rotated.worst_angle_accuracy" in shown
    plots = json.loads(run(["dvc", "plots", "show", "--json"], tiny_repo).stdout)
    assert not plots.get("errors"), plots["errors"]
    assert {"plots/compare/angle_accuracy.csv", "plots/compare/pareto.csv"} <= set(plots["data"])

    # the drift story: one phase per arriving angle, one nested run per round under one curriculum run
    story = json.loads((tiny_repo / "metrics" / "curriculum.json").read_text())
    assert list(story["phases"]) == [f"{i}_angle_{a}" for i, a in enumerate((0, -30, -20, -10, 10, 20, 30))]
    assert set(story["final"]["accuracy"]) == {f"angle_{a}" for a in (-30, -20, -10, 0, 10, 20, 30)}
    experiment_id = client.get_experiment_by_name("rotmnist").experiment_id
    parents = client.search_runs([experiment_id], "tags.curriculum_role = 'curriculum'")
    rounds = client.search_runs([experiment_id], "tags.curriculum_role = 'round'")
    assert len(parents) == 1 and len(rounds) == story["rounds"] >= 7
    assert {r.data.tags["mlflow.parentRunId"] for r in rounds} == {parents[0].info.run_id}
    assert "curriculum" in run(["dvc", "metrics", "show", "metrics/curriculum.json"], tiny_repo).stdout
    assert (tiny_repo / "plots" / "curriculum" / "accuracy_matrix.png").is_file()

    assert "up to date" in run(["dvc", "status"], tiny_repo).stdout.lower()
    again = run(["dvc", "repro"], tiny_repo).stdout
    assert "didn't change" in again or "up to date" in again.lower()
    assert "Running stage" not in again

    # Editing learn_model's module or the final training's MLflow logging re-runs train, never the sweep.
    for module in ("learn.py", "training_run.py"):
        path = tiny_repo / "src" / "rotmnist" / module
        path.write_text(path.read_text() + "\n# edited\n")
    status = run(["dvc", "status", "--json"], tiny_repo).stdout
    changed = set(json.loads(status))
    assert changed == {"train"}, status


def assert_dvc_shows_every_metric(repo) -> None:
    """`dvc metrics show` loads every metrics file whole: no warning, and DVC's values are the files' values."""
    assert "fail" not in run(["dvc", "metrics", "show"], repo).stderr.lower()
    proc = run(["dvc", "metrics", "show", "--json"], repo)
    assert not proc.stderr.strip(), proc.stderr
    shown = json.loads(proc.stdout)[""]["data"]
    files = {f"metrics/{p.name}": json.loads(p.read_text()) for p in sorted((repo / "metrics").glob("*.json"))}
    assert (
        set(shown)
        == set(files)
        == {
            f"metrics/{n}.json"
            for n in ("data_profile", "split_manifest", "tune", "train", "monitor", "compare", "curriculum")
        }
    )
    for path, content in files.items():
        assert "error" not in shown[path], (path, shown[path])
        assert shown[path]["data"] == content, path  # DVC silently drops a value it cannot show


def test_dvc_shows_every_metric_and_the_roc_curves_after_a_first_and_a_second_promotion(tiny_repo):
    set_params(tiny_repo / "params.yaml", {"monitor": {"threshold": 1.0, "angle_threshold": 1.0, "tolerance": 1.0}})
    run(["git", "commit", "-qam", "a gate every tiny model passes"], tiny_repo)
    run(["dvc", "repro"], tiny_repo)
    first = json.loads((tiny_repo / "metrics" / "monitor.json").read_text())
    assert first["registry"] == {"model_name": "rotmnist-cnn", "version": 1, "champion_after": 1}
    assert_dvc_shows_every_metric(tiny_repo)

    run(["dvc", "exp", "run", "-S", "train.epochs=2"], tiny_repo)
    second = json.loads((tiny_repo / "metrics" / "monitor.json").read_text())
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
    assert_dvc_shows_every_metric(tiny_repo)

    proc = run(["dvc", "plots", "show", "--json"], tiny_repo)
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


def test_exp_run_in_a_temporary_copy_logs_into_the_same_stores(tiny_repo):
    run(["dvc", "repro"], tiny_repo)
    client = MlflowClient(f"sqlite:///{tiny_repo / 'mlflow.db'}")
    parent = {r.data.tags["mlflow.parentRunId"] for r in _children(client)}

    run(["dvc", "exp", "run", "--temp", "-S", "tune.n_trials=3", "-S", "train.epochs=2"], tiny_repo)

    # The study's name ignores n_trials, so the journal at the repository root is extended by one trial
    # under the same parent run, and the new train run and model version land in the same MLflow store.
    children = _children(client)
    assert len(children) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == parent
    train_runs = client.search_runs([client.get_experiment_by_name("rotmnist").experiment_id], "tags.stage = 'train'")
    assert sorted(r.data.params["epochs"] for r in train_runs) == ["1", "2"]
    assert str(client.get_model_version_by_alias("rotmnist-cnn", "candidate").version) == "2"
    assert not list((tiny_repo / ".dvc" / "tmp").rglob("mlflow.db"))
    assert not list((tiny_repo / ".dvc" / "tmp").rglob("journal.log"))


def test_augment_is_byte_identical_after_forced_rerun(tiny_repo):
    run(["dvc", "repro", "augment"], tiny_repo)
    lock_before = (tiny_repo / "dvc.lock").read_text()
    run(["dvc", "repro", "-f", "-s", "augment"], tiny_repo)
    assert (tiny_repo / "dvc.lock").read_text() == lock_before


def test_push_then_pull_restores_identical_files(tiny_repo):
    run(["dvc", "repro", "split"], tiny_repo)
    before = {d: _digests(tiny_repo / "data" / d) for d in ("raw", "augmented", "splits")}
    run(["dvc", "push", "--with-deps", "split"], tiny_repo)
    shutil.rmtree(tiny_repo / ".dvc" / "cache")
    shutil.rmtree(tiny_repo / "data")
    run(["dvc", "pull", "--with-deps", "split"], tiny_repo)
    after = {d: _digests(tiny_repo / "data" / d) for d in ("raw", "augmented", "splits")}
    assert after == before
    x = load_dataset(tiny_repo / "data" / "splits" / "train").x
    assert x.dtype == np.uint8 and x.shape[1:] == (28, 28)
