"""Stage `compare` on tiny splits, with a real MLflow store: the table, the verdicts, the plots and the runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from rotmnist import io
from rotmnist.config import config_from_dict
from rotmnist.data.dataset import Dataset, save_dataset
from rotmnist.data.rotation import exhaustive_dataset
from rotmnist.errors import PipelineError
from rotmnist.learning.model import classifier_from_spec
from rotmnist.paths import Paths
from rotmnist.spec import ALLOWED_ANGLES, CONFIGURATIONS
from rotmnist.stages import compare
from tests.support.helpers import tiny_mnist

pytestmark = pytest.mark.slow  # trains six small models

EXPERIMENT = "cmp"
FIELDS = {
    "model",
    "training_data",
    "accuracy",
    "upright_accuracy",
    "worst_angle",
    "worst_angle_accuracy",
    "angle_accuracy",
    "latency_ms_p50",
    "latency_ms_p99",
    "batch_images_per_second",
    "parameters",
    "model_bytes",
    "sla_met",
    "sla_reasons",
    "train_images",
    "train_seconds",
    "trained_by",
    "pareto",
}
TINY = {
    "compare": {
        "train_images": 8000,
        "lr": 0.01,
        "batch_size": 64,
        "specs": {"cnn": {"blocks": 1, "channels": 4, "dense": 16}, "mlp": {"layers": 1, "width": 32}},
        # Between the upright-only models (~30 % at ±30°) and the rotated ones on this data, and no latency limit.
        "sla": {"min_worst_angle_accuracy": 0.6, "max_p99_latency_ms": 1000.0},
    },
    "latency": {"warmup": 2, "single_calls": 20, "batch_size": 32, "batch_calls": 2},
    "train": {"num_threads": 1},
    "mlflow": {"experiment": EXPERIMENT},
}


def _upright(x: np.ndarray, y: np.ndarray, first: int) -> Dataset:
    n = len(x)
    ids = np.arange(first, first + n, dtype=np.int32)
    return Dataset(x=x, y=y, source_id=ids, angle=np.zeros(n, np.int8), mnist_split=np.zeros(n, np.int8))


@pytest.fixture
def ws(tmp_path, monkeypatch, empty_store) -> Paths:
    """Tiny train and test splits at every angle, an untrained `pipeline` model, an empty MLflow store."""
    x, y, x_test, y_test = tiny_mnist(n_train=240, n_test=60, seed=0)
    paths = Paths(root=tmp_path, store_root=tmp_path)
    save_dataset(exhaustive_dataset(_upright(x, y, 0)), paths.split("train"))
    save_dataset(exhaustive_dataset(_upright(x_test, y_test, 240)), paths.split("test"))
    spec = {"family": "cnn", "blocks": 1, "channels": 4, "kernel": 3, "dense": 16}
    paths.models.mkdir()
    torch.save(classifier_from_spec(spec).state_dict(), paths.model_file)
    io.write_json(paths.run_reference, {"run_id": "not-in-this-store", "model_uri": "runs:/x/model", "spec": spec})
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    before = torch.get_num_threads()
    yield paths
    torch.set_num_threads(before)


def _leaves(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), obj


def test_every_configuration_is_trained_scored_judged_plotted_and_logged(ws: Paths):
    compare.main(config_from_dict(TINY), ws)

    doc = json.loads(ws.report("compare").read_text())
    rows = doc["configurations"]
    assert list(rows) == list(CONFIGURATIONS)
    nulls = [key for key, value in _leaves(doc) if value is None]
    assert nulls == []  # DVC cannot show null
    for name, row in rows.items():
        assert set(row) == FIELDS, name
        assert set(row["angle_accuracy"]) == {str(a) for a in (0, *ALLOWED_ANGLES)}
        assert row["worst_angle_accuracy"] == min(row["angle_accuracy"].values())
        assert row["angle_accuracy"][str(row["worst_angle"])] == row["worst_angle_accuracy"]
        assert 0 < row["latency_ms_p50"] <= row["latency_ms_p99"]
        assert row["parameters"] > 0 and row["model_bytes"] > 0
        # The verdict follows the thresholds (no latency limit here): met exactly when the worst angle clears 60 %.
        assert row["sla_met"] == (row["worst_angle_accuracy"] >= 0.6), name
        assert (row["sla_reasons"] == "none") == row["sla_met"]
    trained = [r for n, r in rows.items() if n != "pipeline"]
    assert {r["train_images"] for r in trained} == {8000}  # one budget for all
    assert {r["sla_met"] for r in rows.values()} == {True, False}
    assert rows["pipeline"]["trained_by"] == "train (run not in this store)"
    assert any(r["pareto"] for r in rows.values())

    # Trained on upright digits only, every family falls at ±30° below its twin trained on the rotated split.
    for family in ("logreg", "mlp", "cnn"):
        up, rot = rows[f"{family}-upright"]["angle_accuracy"], rows[f"{family}-rotated"]["angle_accuracy"]
        assert up["-30"] + up["30"] < rot["-30"] + rot["30"], family

    folder = ws.plots / "compare"
    table = (folder / "angle_accuracy.csv").read_text().splitlines()
    assert table[0] == ",".join(("angle", *CONFIGURATIONS)) and len(table) == 1 + 7
    assert len((folder / "pareto.csv").read_text().splitlines()) == 1 + len(CONFIGURATIONS)
    assert (folder / "angle_accuracy.png").stat().st_size > 0 and (folder / "pareto.png").stat().st_size > 0

    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.role = 'compare'")
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_name = {r.info.run_name: r for r in children}
    assert set(by_name) == set(CONFIGURATIONS)
    for name, run in by_name.items():
        assert run.data.metrics["worst_angle_accuracy"] == pytest.approx(rows[name]["worst_angle_accuracy"], abs=1e-6)
        assert run.data.tags["sla"] == ("met" if rows[name]["sla_met"] else "failed")
        assert run.data.tags["pareto"] == str(rows[name]["pareto"]).lower()
    assert by_name["cnn-upright"].data.params["blocks"] == "1"
    artifacts = {f.path for f in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/angle_accuracy.png", "plots/pareto.png", "plots/pareto.csv"} <= artifacts


def test_listed_configurations_only_and_no_model_needed_without_the_pipeline_row(ws: Paths):
    ws.model_file.unlink()
    cfg = config_from_dict(TINY | {"compare": TINY["compare"] | {"configurations": ["logreg-upright"]}})
    compare.main(cfg, ws)
    assert list(json.loads(ws.report("compare").read_text())["configurations"]) == ["logreg-upright"]
    first = (ws.plots / "compare" / "angle_accuracy.csv").read_text().splitlines()[1].split(",")
    assert first[0] == "-30" and first[1 + CONFIGURATIONS.index("logreg-upright")] != ""
    assert first.count("") == len(CONFIGURATIONS) - 1  # the others are blank columns, so dvc plots still draws

    with pytest.raises(PipelineError, match="run `rotmnist train` first"):
        compare.main(config_from_dict(TINY | {"compare": TINY["compare"] | {"configurations": ["pipeline"]}}), ws)
