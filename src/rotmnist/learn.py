"""`learn_model`, one of the course assignment's four fixed prototypes: tune on a dataset, return the best model.

It runs the package's own pieces in memory: the sweep of the stage `tune` (every trial an MLflow run)
on a validation split of the dataset made by source image, then the training loop on the best choice.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rotmnist.config import Config, load_config
from rotmnist.data.dataset import Dataset
from rotmnist.data.images import pixel_problem
from rotmnist.data.sources import holdout_sources, make_folds, sweep_subsets
from rotmnist.learning.device import apply_threads, resolve_device
from rotmnist.learning.model import RawImageClassifier
from rotmnist.learning.recipe import PIPELINE_RECIPE_KEYS, recipe
from rotmnist.learning.training import fit
from rotmnist.paths import Paths
from rotmnist.spec import IMAGE_SHAPE, N_CLASSES
from rotmnist.tracking import store
from rotmnist.tracking.tune import run_sweep


def as_dataset(dataset: Any) -> Dataset:
    """A Dataset, or anything with `.x` (N, 28, 28) pixels 0-255 and `.y` digits (optional `.source_id`, `.angle`).

    Without `.source_id` each row counts as its own source image.
    """
    if isinstance(dataset, Dataset):
        return dataset
    x, y = getattr(dataset, "x", None), getattr(dataset, "y", None)
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise TypeError(
            f"dataset must be a rotmnist.data.dataset.Dataset or have numpy arrays .x and .y; got {type(dataset)}"
        )
    if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE or len(x) != len(y):
        raise ValueError(f"dataset.x must be (N, 28, 28) and dataset.y (N,); got {x.shape} and {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= N_CLASSES or not np.array_equal(y, np.rint(y))):
        raise ValueError(f"dataset.y must hold whole digits 0-9, got values in [{y.min()}, {y.max()}]")
    sources = getattr(dataset, "source_id", None)
    if sources is not None:
        sources = np.asarray(sources)
        if sources.shape != y.shape or sources.dtype.kind not in "iu":
            raise ValueError(f"dataset.source_id must be integers, one per image; got {sources.dtype} {sources.shape}")
        if len(sources) and (sources.min() < 0 or sources.max() > np.iinfo(np.int32).max):
            raise ValueError("dataset.source_id must be in 0..2**31-1")
    problem = pixel_problem(x)
    if problem:
        raise ValueError(f"dataset.x: {problem}")
    n = len(x)
    return Dataset(
        x=np.rint(x).astype(np.uint8),
        y=y.astype(np.uint8),
        source_id=(np.arange(n) if sources is None else sources).astype(np.int32),
        angle=np.asarray(getattr(dataset, "angle", np.zeros(n)), dtype=np.int8),
        mnist_split=np.zeros(n, np.int8),
    )


def learn_model(dataset: Any, *, config: Config | None = None, paths: Paths | None = None) -> RawImageClassifier:
    """Tune on a validation split of `dataset` (k-fold CV when tune.cv_folds > 1), then train the best; return it.

    The same sweep as the stage `tune` (`run_sweep`, logged to MLflow), on `dataset` instead of the
    split files; the returned RawImageClassifier has `.predict(x)` -> digits. Settings come from
    params.yaml unless `config` is given.
    """
    ds = as_dataset(dataset)
    if len(ds) == 0:
        raise ValueError("learn_model needs a non-empty dataset")
    config = config or load_config()
    paths = paths or Paths.here()
    apply_threads(config.train.num_threads)
    cfg = config.tune
    if cfg.cv_folds == 1:
        fit_part, val_part = holdout_sources(ds, config.split.val_fraction, cfg.seed)
    else:
        fit_part, val_part = ds, None
    sweep_train, sweep_val = sweep_subsets(fit_part, val_part, cfg)
    folds = make_folds(sweep_train, sweep_val, cfg.cv_folds, cfg.seed)
    store.configure_mlflow(config, paths)
    tags = {
        "git_commit": store.git_commit(paths),
        "data_hash": store.array_digest(ds.x, ds.y),
        "stage": "learn_model",
    }
    result = run_sweep(folds, config, paths, data_hash=tags["data_hash"], tags=tags)
    hp = recipe(config, result.hyper, config.train.epochs, PIPELINE_RECIPE_KEYS)
    device = resolve_device(config.train.device)
    fitted = fit(result.spec, fit_part, val_part, hp, device=device, seed=config.train.seed, desc="learn_model")
    return fitted.model.cpu()
