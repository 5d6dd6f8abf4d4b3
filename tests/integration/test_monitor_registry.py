"""Stage `monitor` and the registry loader on a real MLflow store (SQLite in a temp folder).

Most candidates are "oracle" models (tests/support/oracle.py) whose holdout accuracy per angle is set exactly:
each holdout image carries its label, its angle's index and a rank 0-99 in three corner pixels, and the oracle
errs on the images of an angle whose rank is below that angle's failure percentage.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from scipy import ndimage
from torch import nn

from rotmnist.commands import predict
from rotmnist.data.dataset import Dataset, save_dataset
from rotmnist.learning import model
from rotmnist.paths import Paths
from rotmnist.reports import metrics_problems
from rotmnist.stages import monitor
from rotmnist.tracking import registry
from tests.support.headlines import expected_headline
from tests.support.helpers import MONITOR_PLOTS, tiny_mnist
from tests.support.oracle import (
    ANGLES,
    NAME,
    Oracle,
    artifact_dir,
    make_config,
    oracle_holdout,
    run_monitor,
    train_run,
)

pytestmark = pytest.mark.slow  # a real MLflow store and torch.export: seconds per test


@pytest.fixture
def ws(tmp_path, monkeypatch, empty_store) -> Paths:
    """A workspace with the oracle holdout (also its test split, turned across the circle) and its own MLflow store."""
    monkeypatch.delenv("ROTMNIST_STORE_ROOT", raising=False)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    paths = Paths(root=tmp_path, store_root=tmp_path)
    for split in ("holdout", "test"):
        save_dataset(oracle_holdout(), paths.split(split))
    return paths


def alias(name: str, which: str) -> str | None:
    try:
        return str(MlflowClient().get_model_version_by_alias(name, which).version)
    except mlflow.exceptions.MlflowException:
        return None


def test_a_good_model_is_registered_and_promoted(ws):
    report = run_monitor(ws, Oracle({30: 3}))
    assert report["gate"] == {
        "decision": "passed",
        "passed": True,
        "drift": False,
        "reasons": "none",
        "threshold": 0.05,
        "angle_threshold": 0.08,
        "tolerance": 0.02,
    }
    assert report["registry"] == {"model_name": NAME, "version": 1, "champion_after": 1}  # no champion before
    h = report["holdout"]
    assert h["n"] == 700 and h["accuracy"] == pytest.approx(1 - 3 / 700)
    assert {a: m["accuracy"] for a, m in h["per_angle"].items()} == {str(a): (0.97 if a == 30 else 1.0) for a in ANGLES}
    assert sorted(h["per_class"], key=int) == [str(c) for c in range(10)]
    assert "champion_holdout" not in report
    assert set(report["roc_auc"]["per_class"]) == {str(c) for c in range(10)} and 0.5 < report["roc_auc"]["macro"] <= 1
    assert metrics_problems(report) == []
    assert alias(NAME, "champion") == alias(NAME, "candidate") == "1"
    headline = json.loads(ws.headline("monitor").read_text())
    assert headline == expected_headline("monitor", report)
    assert (headline["holdout_worst_angle"], headline["gate_passed"], headline["champion_version"]) == (30, True, 1)

    client = MlflowClient()
    tags = client.get_model_version(NAME, "1").tags
    run_id = json.loads((ws.models / "run.json").read_text())["run_id"]
    assert tags["gate"] == "passed" and tags["gate_reasons"] == "none" and tags["training_run_id"] == run_id
    assert tags["holdout_accuracy_angle_30"] == "0.970000" and tags["git_commit"] and tags["data_hash"]
    # the metrics and plots also went to the training run
    run = client.get_run(run_id)
    assert run.data.metrics["holdout_accuracy_angle_30"] == pytest.approx(0.97)
    assert run.data.metrics["gate_passed"] == 1.0
    logged = {f.path for f in client.list_artifacts(run_id, "monitor")}
    assert {"monitor/monitor.json", "monitor/angle_accuracy.png", "monitor/confusion.png"} <= logged
    assert {"monitor/misclassified.png", "monitor/angle_accuracy.csv", "monitor/confusion.csv"} <= logged
    assert {"monitor/roc.png", "monitor/roc.csv", "monitor/circle.png", "monitor/circle.csv"} <= logged
    circle = report["circle"]
    assert list(circle) == ["test", "holdout"] and list(circle["test"]) == [str(a) for a in range(-90, 91, 15)]
    assert circle["holdout"]["0"] == report["holdout"]["per_angle"]["0"]["accuracy"]  # upright: unturned digits
    assert run.data.metrics["circle_test_accuracy_angle_-90"] == circle["test"]["-90"]
    assert run.data.metrics["holdout_auc_class_3"] == report["roc_auc"]["per_class"]["3"]
    plots = sorted(p.name for p in (ws.plots / "monitor").iterdir())
    assert plots == MONITOR_PLOTS

    monitor.main(make_config(), ws)  # the stage again on the same model: no second version
    assert [str(v.version) for v in registry.model_versions(client, NAME)] == ["1"]
    assert alias(NAME, "champion") == "1"


def test_a_drifting_candidate_is_registered_but_the_champion_stays(ws, caplog):
    run_monitor(ws, Oracle())
    with caplog.at_level(logging.INFO, logger="rotmnist.stages.monitor"):
        report = run_monitor(ws, Oracle({-30: 20, 30: 10}))  # fine upright, poor when rotated
    assert report["gate"]["decision"] == "failed" and report["gate"]["drift"] is True
    assert report["gate"]["reasons"].split("; ") == [
        "error at -30 deg 20.00% > monitor.angle_threshold 8.00%",
        "error at 30 deg 10.00% > monitor.angle_threshold 8.00%",
        "accuracy overall 95.71% is 4.29% below champion v1 (100.00%), beyond monitor.tolerance 2.00%",
        "accuracy at -30 deg 80.00% is 20.00% below champion v1 (100.00%), beyond monitor.tolerance 2.00%",
        "accuracy at 30 deg 90.00% is 10.00% below champion v1 (100.00%), beyond monitor.tolerance 2.00%",
    ]
    assert report["registry"]["version"] == 2 and report["registry"]["champion_after"] == 1
    headline = json.loads(ws.headline("monitor").read_text())
    assert (headline["gate_passed"], headline["version"], headline["champion_version"]) == (False, 2, 1)
    assert (headline["holdout_worst_angle"], headline["holdout_worst_angle_accuracy"]) == (-30, 0.8)
    assert alias(NAME, "champion") == "1" and alias(NAME, "candidate") == "2"
    tags = MlflowClient().get_model_version(NAME, "2").tags
    assert (tags["gate"], tags["concept_drift"]) == ("failed", "true")
    assert "version 2 was NOT promoted (champion stays version 1); concept drift (holdout check) flagged" in caplog.text
    rows = (ws.plots / "monitor" / "angle_accuracy.csv").read_text().splitlines()
    assert rows[0] == "angle,candidate,champion" and rows[1] == "-30,0.8,1.0"


def test_the_first_candidate_is_not_promoted_if_it_drifts(ws):
    report = run_monitor(ws, Oracle({0: 10}))
    assert report["gate"]["reasons"] == "error at 0 deg 10.00% > monitor.angle_threshold 8.00%"
    assert alias(NAME, "champion") is None and alias(NAME, "candidate") == "1"
    headline = json.loads(ws.headline("monitor").read_text())
    assert (headline["gate_passed"], headline["version"]) == (False, 1) and "champion_version" not in headline


def test_a_candidate_worse_than_the_champion_beyond_the_tolerance_is_not_promoted(ws):
    loose = make_config(threshold=0.5, angle_threshold=0.5, tolerance=0.02)
    run_monitor(ws, Oracle({-10: 5}), loose)
    # the champion is re-scored, not trusted from its tags: a forged tag changes nothing
    MlflowClient().set_model_version_tag(NAME, "1", "holdout_accuracy_angle_-10", "0.100000")
    worse = run_monitor(ws, Oracle({-10: 8}), loose)
    assert worse["gate"]["drift"] is False and worse["gate"]["passed"] is False
    assert worse["gate"]["reasons"] == (
        "accuracy at -10 deg 92.00% is 3.00% below champion v1 (95.00%), beyond monitor.tolerance 2.00%"
    )
    assert worse["champion_holdout"]["per_angle"]["-10"]["accuracy"] == pytest.approx(0.95)
    assert alias(NAME, "champion") == "1"
    within = run_monitor(ws, Oracle({-10: 7}), loose)  # 2 points worse: within the tolerance
    assert within["gate"]["passed"] and within["registry"]["compared_with"] == 1
    assert alias(NAME, "champion") == "3"


def test_load_champion_falls_back_to_the_previous_passed_version(ws, caplog):
    run_monitor(ws, Oracle())  # v1 passed
    run_monitor(ws, Oracle({20: 50}))  # v2 failed
    run_monitor(ws, Oracle())  # v3 passed: champion
    assert alias(NAME, "champion") == "3"
    weights = artifact_dir("3") / "data" / "model.pt2"
    good = weights.read_bytes()
    x, y = oracle_holdout().x[:5], oracle_holdout().y[:5]
    for damage in ("corrupted", "deleted"):
        if damage == "corrupted":
            weights.write_bytes(b"\x00garbage" * 100)
        else:
            weights.unlink()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="rotmnist.tracking.registry"):
            clf = registry.load_champion(NAME)
        assert clf.version == "1", damage  # v2 is newer but its gate failed
        assert "version 3 failed to load" in caplog.text and "fell back to version 1" in caplog.text
        assert clf.predict(x).tolist() == y.tolist()
        weights.write_bytes(good)
    assert registry.load_champion(NAME).version == "3"  # repaired: the champion itself again

    weights.unlink()
    (artifact_dir("1") / "data" / "model.pt2").unlink()
    with pytest.raises(registry.RegistryError, match=r"no version of 'digits' could be loaded.*v3.*v1"):
        registry.load_champion(NAME)


def test_the_champion_scores_any_batch_size_and_predict_prints_digits(ws, tmp_path, capsys):
    run_monitor(ws, Oracle())
    holdout = oracle_holdout()
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    for n in (1, 7):
        probs = np.asarray(model.predict(holdout.x[:n].astype(np.float32)))
        assert probs.shape == (n, 10)
        assert probs.argmax(1).tolist() == holdout.y[:n].tolist()

    np.save(tmp_path / "digits.npy", holdout.x[:3])
    predict.main(make_config(), ws, [str(tmp_path / "digits.npy")], None)
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[1:] for line in out] == [[str(d), "1.0000"] for d in holdout.y[:3]]
    predict.main(make_config(), ws, [str(tmp_path / "digits.npy")], f"models:/{NAME}/1")
    assert len(capsys.readouterr().out.splitlines()) == 3
    with pytest.raises(registry.RegistryError, match=f"cannot load model models:/{NAME}/9"):
        predict.main(make_config(), ws, [str(tmp_path / "digits.npy")], f"models:/{NAME}/9")


def rotated_set(x: np.ndarray, y: np.ndarray, angles: tuple[int, ...]) -> Dataset:
    """`x` at every angle in `angles` (bilinear rotation about the centre), as a Dataset."""
    xs = [x if a == 0 else ndimage.rotate(x, a, axes=(2, 1), reshape=False, order=1) for a in angles]
    n = len(x)
    return Dataset(
        x=np.clip(np.concatenate(xs), 0, 255).astype(np.uint8),
        y=np.tile(y, len(angles)).astype(np.uint8),
        source_id=np.tile(np.arange(n, dtype=np.int32), len(angles)),
        angle=np.repeat(np.array(angles, np.int8), n),
        mnist_split=np.zeros(n * len(angles), np.int8),
    )


def fit(ds: Dataset, epochs: int) -> model.RawImageClassifier:
    """A small CNN trained for a couple of seconds (Adam, batches of 128), seeded, on one thread.

    One thread: deterministic, and on a busy 2-core box several times faster than two contending ones.
    """
    torch.manual_seed(0)
    net = model.classifier_from_spec(
        {"family": "cnn", "blocks": 2, "channels": 8, "kernel": 5, "dense": 0, "batch_norm": False, "dropout": 0.0}
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = torch.from_numpy(ds.x.astype(np.float32)), torch.from_numpy(ds.y.astype(np.int64))
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=gen).split(128):
                opt.zero_grad()
                nn.functional.cross_entropy(net.logits(x[idx]), y[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval()


def test_a_model_trained_on_upright_digits_only_fails_the_gate_on_the_rotated_holdout(ws):
    x_train, y_train, x_test, y_test = tiny_mnist(n_train=300, n_test=100, seed=3)
    save_dataset(rotated_set(x_test, y_test, ANGLES), ws.split("holdout"))  # 700 images, every angle
    rotation_robust = fit(rotated_set(x_train, y_train, ANGLES), epochs=4)
    upright_only = fit(rotated_set(x_train, y_train, (0,)), epochs=28)  # as many steps as the other

    first = run_monitor(ws, rotation_robust)
    assert first["gate"]["decision"] == "passed", first["gate"]["reasons"]
    assert alias(NAME, "champion") == "1"

    second = run_monitor(ws, upright_only)
    per_angle = {int(a): m["accuracy"] for a, m in second["holdout"]["per_angle"].items()}
    assert per_angle[0] >= 0.95  # it reads upright digits well...
    assert min(per_angle[-30], per_angle[30]) < 0.7  # ...and fails on the rotated ones
    assert second["gate"]["decision"] == "failed" and second["gate"]["drift"] is True
    assert "error at -30 deg" in second["gate"]["reasons"] and "error at 30 deg" in second["gate"]["reasons"]
    assert alias(NAME, "champion") == "1" and alias(NAME, "candidate") == "2"


class Crash(Exception):
    """An injected failure: the process dies here."""


def test_a_crash_before_the_champion_moves_leaves_it_and_the_rerun_decides_the_same(ws, monkeypatch):
    run_monitor(ws, Oracle({-10: 5}))  # v1: the champion
    set_alias = MlflowClient.set_registered_model_alias

    def crash_on_champion(self, name, alias_name, version):
        if alias_name == registry.CHAMPION:
            raise Crash("killed just before the champion alias moves")
        return set_alias(self, name, alias_name, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", crash_on_champion)
    train_run(ws, Oracle())  # v2 would pass: better than v1 everywhere
    with pytest.raises(Crash):
        monitor.main(make_config(), ws)
    assert alias(NAME, "champion") == "1"  # the registry still says what the decision was compared with
    crashed = json.loads(ws.report("monitor").read_text())

    monkeypatch.undo()
    monitor.main(make_config(), ws)  # the rerun
    report = json.loads(ws.report("monitor").read_text())
    assert report | {"seconds": 0} == crashed | {"seconds": 0}  # the same decision, against the same champion
    assert report["registry"] == {
        "model_name": NAME,
        "version": 2,
        "champion_before": 1,
        "compared_with": 1,
        "champion_after": 2,
    }
    assert [str(v.version) for v in registry.model_versions(MlflowClient(), NAME)] == ["2", "1"]
    assert alias(NAME, "champion") == alias(NAME, "candidate") == "2"
    assert MlflowClient().get_model_version(NAME, "2").tags["gate"] == "passed"


class Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def replace_with_payload(model_dir: Path, how: str, marker: Path) -> None:
    """Swap a logged model's weights (or its declared loader) for a pickle that runs code when loaded."""
    import pickle

    import yaml

    payload = pickle.dumps(Payload(marker))
    data = model_dir / "data"
    if how == "pt2 file":
        (data / "model.pt2").write_bytes(payload)
    elif how == "pickled model.pth":  # MLflow's PyTorch loader prefers model.pth and torch.load()s it
        (data / "model.pth").write_bytes(payload)
        (data / "pickle_module_info.txt").write_text("pickle")
    else:  # a pyfunc PythonModel: MLflow cloudpickle-loads python_model.pkl
        (model_dir / "python_model.pkl").write_bytes(payload)
        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
        mlmodel["flavors"] = {
            "python_function": {"loader_module": "mlflow.pyfunc.model", "python_model": "python_model.pkl"}
        }
        (model_dir / "MLmodel").write_text(yaml.safe_dump(mlmodel))


@pytest.mark.parametrize("how", ["pt2 file", "pickled model.pth", "pyfunc python model"])
def test_a_champion_replaced_by_a_pickle_payload_runs_no_code_and_falls_back(ws, tmp_path, monkeypatch, caplog, how):
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # our own check must hold even then
    run_monitor(ws, Oracle())  # v1
    run_monitor(ws, Oracle())  # v2: champion
    assert alias(NAME, "champion") == "2"
    marker = tmp_path / "payload-ran"
    replace_with_payload(artifact_dir("2"), how, marker)
    with caplog.at_level(logging.WARNING, logger="rotmnist.tracking.registry"):
        clf = registry.load_champion(NAME)
    assert not marker.exists()
    assert clf.version == "1"
    assert "champion digits version 2 failed to load" in caplog.text and "fell back to version 1" in caplog.text
    with pytest.raises(registry.RegistryError, match=r"^refusing to load model models:/digits/2: "):
        registry.load_model(f"models:/{NAME}/2")
    assert not marker.exists()
