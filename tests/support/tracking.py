"""Settings of the tests that track to MLflow, and MLflow's process-wide settings put back after a test."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from rotmnist.config import Config, MlflowConfig

# What mlflow.set_tracking_uri, set_registry_uri and set_experiment write for subprocesses to inherit.
MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")


def mlflow_config(experiment: str = "t", uri: str = "") -> Config:
    """The default settings but for MLflow's experiment and tracking URI."""
    return Config(mlflow=MlflowConfig(experiment=experiment, tracking_uri=uri))


@contextlib.contextmanager
def restored_mlflow() -> Iterator[None]:
    """Put MLflow's process-wide settings back as they were when the block ends: the tracking and registry
    URIs, the active experiment, and the environment variables that carry them to subprocesses.

    MLflow keeps the URIs and the experiment in module globals with no public way to read the unset state,
    so they are read there, as MLflow's own test suite does.
    """
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env = {name: os.environ.get(name) for name in MLFLOW_ENV}
    tracking, registry = tracking_utils._tracking_uri, registry_utils._registry_uri
    experiment = fluent._active_experiment_id
    try:
        yield
    finally:
        mlflow.set_tracking_uri(tracking)  # None: unset again (it also resets the tracer that caches the URI)
        mlflow.set_registry_uri(registry)
        fluent._active_experiment_id = experiment
        for name, value in env.items():  # after the setters: they write (or clear) these too
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
