"""Oracle models whose holdout accuracy per angle is set exactly, their holdout, and the monitor stage run on them.

Each holdout image carries its label, its angle's index and a rank 0-99 in three corner pixels, and the oracle
errs on the images of an angle whose rank is below that angle's failure percentage.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from torch import nn

from rotmnist import io
from rotmnist.config import Config, MlflowConfig, MonitorConfig
from rotmnist.data.dataset import Dataset
from rotmnist.paths import Paths
from rotmnist.stages import monitor
from rotmnist.tracking import store
from rotmnist.tracking import train as training_run
from tests.support.helpers import tiny_mnist

ANGLES = (0, -30, -20, -10, 10, 20, 30)
PER_ANGLE = 100
NAME = "digits"


class Oracle(nn.Module):
    """Right on every holdout image except `fail_percent[angle]` % of that angle's images."""

    def __init__(self, fail_percent: dict[int, int] | None = None):
        super().__init__()
        fail = [(fail_percent or {}).get(a, 0) for a in ANGLES]
        self.register_buffer("fail", torch.tensor(fail, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label = x[:, 0, 0].long()
        wrong = self.fail[x[:, 0, 1].long()] > x[:, 0, 2]
        return nn.functional.one_hot(torch.where(wrong, (label + 1) % 10, label), 10).float()


def oracle_holdout() -> Dataset:
    """PER_ANGLE synthetic digits per angle, with label, angle index and rank written in pixels (0, 0..2)."""
    x_src, y_src, _, _ = tiny_mnist(n_train=100, n_test=10, seed=1)
    n = len(ANGLES) * PER_ANGLE
    rank = np.tile(np.arange(PER_ANGLE), len(ANGLES))
    y = (rank % 10).astype(np.uint8)
    x = np.stack([x_src[np.flatnonzero(y_src == label)[i % 10]] for i, label in enumerate(y)])
    x[:, 0, 0], x[:, 0, 1], x[:, 0, 2] = y, np.repeat(np.arange(len(ANGLES)), PER_ANGLE), rank
    return Dataset(
        x=x,
        y=y,
        source_id=np.arange(n, dtype=np.int32) % PER_ANGLE,
        angle=np.repeat(np.array(ANGLES, np.int8), PER_ANGLE),
        mnist_split=np.zeros(n, np.int8),
    )


def make_config(**monitor_keys) -> Config:
    keys = {"model_name": NAME, "threshold": 0.05, "angle_threshold": 0.08, "tolerance": 0.02} | monitor_keys
    return Config(monitor=MonitorConfig(**keys), mlflow=MlflowConfig(experiment="monitor-test"))


def train_run(paths: Paths, module: nn.Module, config: Config | None = None) -> dict:
    """What `train` and `finetune` (passing train's model through) leave behind for `monitor`: a run with the
    logged model, models/run.json and models/candidate.json."""
    store.configure_mlflow(config or make_config(), paths)
    with mlflow.start_run(run_name="train") as run:
        uri = training_run.log_classifier(module.eval(), name="model")
    ref = {"run_id": run.info.run_id, "model_uri": uri}
    io.write_json(paths.run_reference, ref)
    io.write_json(paths.candidate_reference, ref | {"finetuned": False, "base_run_id": ref["run_id"]})
    return ref


def run_monitor(paths: Paths, module: nn.Module, config: Config | None = None) -> dict:
    """Train-stage stand-in + the monitor stage; return its report, reports/monitor.json."""
    config = config or make_config()
    train_run(paths, module, config)
    monitor.main(config, paths)
    return json.loads(paths.report("monitor").read_text())


def artifact_dir(version: str) -> Path:
    uri = MlflowClient().get_model_version_download_uri(NAME, version)
    return Path(uri.removeprefix("file://"))
