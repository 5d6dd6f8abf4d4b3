"""Tiny sweep workspaces for `rotmnist tune` processes: the splits, a params.yaml naming its own study, the command."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from rotmnist.data.dataset import save_dataset
from rotmnist.paths import Paths
from tests.support.datasets import upright
from tests.support.helpers import tiny_mnist
from tests.support.tiny_repo import BIN

ROTMNIST = str(BIN / "rotmnist")
# Tiny trials: a handful of images, small CNNs, no pruning (every trial runs its epochs).
TINY = {
    "tune": {
        "n_trials": 4,
        "epochs": 1,
        "train_fraction": 1.0,
        "val_fraction": 1.0,
        "pruner": "none",
        # A beat a second; silent for 10 s a worker is dead: a live one on a busy machine beats well within it.
        "heartbeat_interval": 1,
        "grace_period": 10,
        "space": {"batch_size": [32], "cnn": {"blocks": [1], "channels": [4], "kernel": [3], "dense": [16, 32]}},
    },
    "train": {"shift": 0, "num_threads": 1, "device": "cpu"},
}


def tiny_splits(folder: Path) -> Path:
    """The tiny train/val/test/holdout splits of synthetic digits in `folder`/data/splits."""
    x, y, x_test, y_test = tiny_mnist(n_train=200, n_test=20, seed=1)
    save_dataset(upright(x[:160], y[:160], 0), folder / "data" / "splits" / "train")
    save_dataset(upright(x[160:], y[160:], 160), folder / "data" / "splits" / "val")
    save_dataset(upright(x_test, y_test, 200), folder / "data" / "splits" / "test")
    save_dataset(upright(x_test, y_test, 200), folder / "data" / "splits" / "holdout")
    return folder


def workspace(tmp_path: Path, splits: Path, name: str, **tune) -> Paths:
    """A workspace with the tiny splits and a params.yaml naming its own study and MLflow experiment."""
    shutil.copytree(splits, tmp_path, dirs_exist_ok=True)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    params = TINY | {"tune": TINY["tune"] | {"study_name": name} | tune, "mlflow": {"experiment": name}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return Paths(root=tmp_path, store_root=tmp_path)
