"""MLflow's process-wide settings come back as they were after a block (and after every test) that changes them."""

from __future__ import annotations

import os
import shutil

import mlflow
from mlflow.tracking import fluent

from tests.support.tracking import restored_mlflow


def test_restored_mlflow_puts_back_the_uris_the_experiment_and_their_environment(tmp_path, monkeypatch, empty_store):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///before.db")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    experiment = fluent._active_experiment_id
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with restored_mlflow():
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        inside = mlflow.set_experiment("inside").experiment_id
        assert os.environ["MLFLOW_TRACKING_URI"] == os.environ["MLFLOW_REGISTRY_URI"] == uri
        assert os.environ["MLFLOW_EXPERIMENT_ID"] == fluent._active_experiment_id == inside
    assert mlflow.get_tracking_uri() == os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///before.db"
    assert mlflow.get_registry_uri() == "sqlite:///before.db"  # unset again: it follows the tracking URI
    assert "MLFLOW_REGISTRY_URI" not in os.environ and "MLFLOW_EXPERIMENT_ID" not in os.environ
    assert fluent._active_experiment_id == experiment
