"""`learn_model`, the public entry point: any object with images and labels in, a tuned model out."""

from __future__ import annotations

import shutil
import types

import numpy as np
import pytest
from mlflow import MlflowClient

from rotmnist import learn
from rotmnist.config import config_from_dict
from rotmnist.paths import Paths
from tests.support.datasets import digit_dataset
from tests.support.helpers import tiny_mnist

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/unit/conftest.py


@pytest.fixture
def ws(tmp_path, monkeypatch, empty_store) -> Paths:
    """A workspace with its own (initialised) SQLite MLflow store and journal."""
    db = tmp_path / "mlflow.db"
    shutil.copy(empty_store, db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.delenv("ROTMNIST_OPTUNA_STORAGE", raising=False)
    return Paths(root=tmp_path, store_root=tmp_path)


TINY = {
    "tune": {
        "n_trials": 2,
        "epochs": 2,
        "train_fraction": 1.0,
        "val_fraction": 1.0,
        "space": {
            "lr": [0.005, 0.01],
            "batch_size": [16],
            "dropout": [0.0, 0.1],
            "cnn": {"channels": [8], "dense": [32], "blocks": [2]},
        },
    },
    "train": {"epochs": 3, "shift": 0, "num_threads": 1},
    "split": {"val_fraction": 0.2},
    "mlflow": {"experiment": "learn"},
}


def test_as_dataset_accepts_objects_with_x_and_y_and_validates_them():
    x, y, _, _ = tiny_mnist(n_train=20, n_test=10)
    ds = learn.as_dataset(types.SimpleNamespace(x=x, y=y))
    assert len(ds) == 20 and np.array_equal(ds.source_id, np.arange(20))
    with pytest.raises(TypeError, match=r"must be a rotmnist.data.dataset.Dataset or have numpy arrays .x and .y"):
        learn.as_dataset([x, y])
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        learn.as_dataset(types.SimpleNamespace(x=x[:, :20], y=y))
    with pytest.raises(ValueError, match="digits 0-9"):
        learn.as_dataset(types.SimpleNamespace(x=x, y=y + 10))
    with pytest.raises(ValueError, match=r"scaled to \[0, 1\]; pass values in 0..255"):
        learn.as_dataset(types.SimpleNamespace(x=x / 255.0, y=y))
    with pytest.raises(ValueError, match="whole digits 0-9"):
        learn.as_dataset(types.SimpleNamespace(x=x, y=y + 0.5))
    with pytest.raises(ValueError, match="source_id must be integers, one per image"):
        learn.as_dataset(types.SimpleNamespace(x=x, y=y, source_id=np.arange(20) + 0.5))
    with pytest.raises(ValueError, match=r"source_id must be in 0..2\*\*31-1"):
        learn.as_dataset(types.SimpleNamespace(x=x, y=y, source_id=np.full(20, 3_000_000_000)))
    assert len(learn.as_dataset(types.SimpleNamespace(x=np.zeros((3, 28, 28)), y=np.zeros(3)))) == 3  # black images
    with pytest.raises(ValueError, match=r"must be in 0..255"):
        learn.as_dataset(types.SimpleNamespace(x=x.astype(np.int16) - 1, y=y))
    with pytest.raises(ValueError, match="NaN or infinite"):
        learn.as_dataset(types.SimpleNamespace(x=np.full(x.shape, np.nan), y=y))


def test_as_dataset_keeps_float_pixels_and_given_sources():
    x, y, _, _ = tiny_mnist(n_train=20, n_test=10)
    sources = np.arange(20) // 2
    ds = learn.as_dataset(types.SimpleNamespace(x=x.astype(np.float32), y=y, source_id=sources))
    assert np.array_equal(ds.x, x) and np.array_equal(ds.source_id, sources)


@pytest.mark.slow  # a sweep and a training run
@pytest.mark.parametrize("cv_folds", [1, 2])
def test_learn_model_returns_a_tuned_model_far_better_than_chance(ws, cv_folds):
    config = config_from_dict(TINY | {"tune": TINY["tune"] | {"cv_folds": cv_folds}})
    data = digit_dataset(400, seed=0)
    model = learn.learn_model(data, config=config, paths=ws)
    held_out = digit_dataset(200, seed=5)
    accuracy = float(np.mean(model.predict(held_out.x) == held_out.y))
    assert accuracy >= 0.8, accuracy  # chance is 0.1
    runs = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("learn").experiment_id])
    assert sum("mlflow.parentRunId" in r.data.tags for r in runs) == 2  # one child run per trial


def test_learn_model_rejects_an_empty_dataset(ws):
    with pytest.raises(ValueError, match="non-empty dataset"):
        learn.learn_model(digit_dataset(10).take(np.zeros(10, bool)), config=config_from_dict(TINY), paths=ws)
