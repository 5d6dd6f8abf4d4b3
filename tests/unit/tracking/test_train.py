"""The train run's logging: the classifier as an MLflow pyfunc model."""

from __future__ import annotations

import shutil

import mlflow
import numpy as np
import pytest
import torch

from rotmnist.config import Config, MlflowConfig
from rotmnist.learning.model import classifier_from_spec, predict_labels
from rotmnist.paths import Paths
from rotmnist.tracking import store
from rotmnist.tracking import train as training_run
from tests.support.helpers import tiny_mnist


@pytest.fixture
def ws(tmp_path, monkeypatch, empty_store) -> Paths:
    """A workspace whose default store (mlflow.db at its root) is a fresh copy of the empty store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return Paths(root=tmp_path, store_root=tmp_path)


def config(experiment: str = "t", uri: str = "") -> Config:
    return Config(mlflow=MlflowConfig(experiment=experiment, tracking_uri=uri))


def _dataset(x: np.ndarray):
    from rotmnist.io import Dataset

    n = len(x)
    return Dataset(
        x=x,
        y=np.zeros(n, np.uint8),
        source_id=np.arange(n, dtype=np.int32),
        angle=np.zeros(n, np.int8),
        mnist_split=np.zeros(n, np.int8),
    )


@pytest.mark.slow  # torch.export
def test_logged_model_round_trips_through_pyfunc_for_any_batch_size(ws):
    store.configure_mlflow(config(), ws)
    torch.manual_seed(0)
    module = classifier_from_spec({"family": "cnn", "blocks": 2, "channels": 4, "dense": 8}).eval()
    x = tiny_mnist(n_train=30, n_test=10)[0]
    digest = store.array_digest(x)
    with mlflow.start_run() as run:
        store.log_dataset(_dataset(x), "train", "training", ws.root / "data", digest)
        uri = training_run.log_classifier(module, name="model")
    assert uri.startswith("models:/")
    inputs = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("train", digest)]

    loaded = mlflow.pyfunc.load_model(uri)
    schema = loaded.metadata.get_input_schema().inputs[0]
    assert schema.shape == (-1, 28, 28) and str(schema.type) == "float32"
    for n in (1, 7, 28):
        probs = np.asarray(loaded.predict(x[:n].astype(np.float32)))
        assert probs.shape == (n, 10)
        np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
        assert np.array_equal(probs.argmax(1), predict_labels(module, x[:n]))
        np.testing.assert_allclose(probs, module(torch.from_numpy(x[:n]).float()).detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("n", [1, 10, 28])
def test_log_classifier_refuses_an_input_example_that_would_fix_the_batch_size(ws, n):
    store.configure_mlflow(config(), ws)
    module = classifier_from_spec({"family": "logreg"})
    with mlflow.start_run(), pytest.raises(ValueError, match="N not in 0, 1, 10, 28"):
        training_run.log_classifier(module, input_example=np.zeros((n, 28, 28), np.float32))
