"""Settings of the tests that track to MLflow."""

from __future__ import annotations

from rotmnist.config import Config, MlflowConfig


def mlflow_config(experiment: str = "t", uri: str = "") -> Config:
    """The default settings but for MLflow's experiment and tracking URI."""
    return Config(mlflow=MlflowConfig(experiment=experiment, tracking_uri=uri))
