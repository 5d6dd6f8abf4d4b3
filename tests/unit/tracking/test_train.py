"""The train run's logging: the classifier as an MLflow pyfunc model."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch

from rotmnist.errors import PipelineError
from rotmnist.learning.model import Pooling, classifier_from_spec, predict_labels, predict_proba
from rotmnist.tracking import store
from rotmnist.tracking import train as training_run
from tests.support.datasets import upright
from tests.support.helpers import tiny_mnist
from tests.support.tracking import mlflow_config


@pytest.mark.slow  # torch.export
def test_logged_model_round_trips_through_pyfunc_for_any_batch_size(ws):
    store.configure_mlflow(mlflow_config(), ws)
    torch.manual_seed(0)
    module = classifier_from_spec({"family": "cnn", "blocks": 2, "channels": 4, "dense": 8}).eval()
    x = tiny_mnist(n_train=30, n_test=10)[0]
    digest = store.array_digest(x)
    with mlflow.start_run() as run:
        store.log_dataset(upright(x, np.zeros(len(x), np.uint8)), "train", "training", ws.root / "data", digest)
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
    store.configure_mlflow(mlflow_config(), ws)
    module = classifier_from_spec({"family": "logreg"})
    with mlflow.start_run(), pytest.raises(ValueError, match="N not in 0, 1, 10, 28"):
        training_run.log_classifier(module, input_example=np.zeros((n, 28, 28), np.float32))


def test_a_model_reference_round_trips_and_a_broken_one_names_the_stage_to_run(tmp_path):
    path = tmp_path / "candidate.json"
    with pytest.raises(PipelineError, match="run `rotmnist finetune` first"):
        training_run.read_run_reference(path, made_by="finetune")
    path.write_text("{not json")
    with pytest.raises(PipelineError, match="not valid JSON"):
        training_run.read_run_reference(path, made_by="finetune")
    path.write_text(json.dumps({"run_id": "abc"}))
    with pytest.raises(PipelineError, match="lacks model_uri; run `rotmnist train` again"):
        training_run.read_run_reference(path, made_by="train")
    training_run.write_run_reference(path, "abc", "models:/m-1", finetuned=True)
    reference = training_run.read_run_reference(path, made_by="finetune")
    assert reference == {"run_id": "abc", "model_uri": "models:/m-1", "finetuned": True} | {
        "tracking_uri": training_run.current_uri()
    }


@pytest.mark.slow  # torch.export
def test_a_pooled_model_is_exported_with_its_pooling_for_sure_unsure_and_mixed_batches(ws):
    store.configure_mlflow(mlflow_config(), ws)
    torch.manual_seed(0)
    module = classifier_from_spec({"family": "cnn", "blocks": 1, "channels": 4, "dense": 0}).eval()
    x = tiny_mnist(n_train=40, n_test=10)[0].astype(np.float32)
    plain = predict_proba(module, x)
    below = float(np.median(plain.max(1)))
    module.pool(Pooling((-60, 0, 60), below))
    unsure = plain.max(1) < below
    with mlflow.start_run():
        uri = training_run.log_classifier(module, name="model")
    loaded = mlflow.pyfunc.load_model(uri)
    for batch in (x[unsure][:1], x[~unsure][:1], x[unsure][:7], x[~unsure][:7], x[:28]):
        probs = np.asarray(loaded.predict(batch))
        np.testing.assert_allclose(probs, predict_proba(module, batch), atol=1e-5)
    assert not np.allclose(np.asarray(loaded.predict(x[unsure][:7])), plain[unsure][:7], atol=1e-3)
