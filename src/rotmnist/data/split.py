"""Splitting by source image into train, val, holdout and test, stratified by class and seeded; the manifest.

A digit and all its rotations land in one split, so no rotation of a validation, holdout or test digit
is ever trained on. `test` is MNIST's original test set (every image with mnist_split == 1, at every
angle); MNIST's training sources are divided into `holdout` (the monitor's ground truth, never used
for training, validation or tuning), `val` and `train`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from rotmnist.config import SplitConfig
from rotmnist.data.dataset import MNIST_TEST, MNIST_TRAIN, Dataset
from rotmnist.errors import PipelineError
from rotmnist.paths import SPLITS
from rotmnist.spec import N_CLASSES

# Split codes are positions in SPLITS: train 0, val 1, holdout 2, test 3.
TRAIN, VAL, HOLDOUT, TEST = (SPLITS.index(name) for name in ("train", "val", "holdout", "test"))


class Sources(NamedTuple):
    """One entry per distinct source image (sorted by id): its label and its MNIST split."""

    ids: np.ndarray
    y: np.ndarray
    mnist_split: np.ndarray
    row_source: np.ndarray  # for every row of the dataset, the index of its source in `ids`


def source_table(ds: Dataset) -> Sources:
    """The distinct source images of `ds`; PipelineError if a source's rows disagree on label or MNIST split."""
    if len(ds) == 0:
        raise PipelineError("the augmented dataset is empty; nothing to split")
    bad = np.setdiff1d(np.unique(ds.mnist_split), [MNIST_TRAIN, MNIST_TEST])
    if len(bad):
        raise PipelineError(
            f"mnist_split holds {bad.tolist()}; allowed are {MNIST_TRAIN} (MNIST train) and {MNIST_TEST} (MNIST test)"
        )
    ids, first, row_source = np.unique(ds.source_id, return_index=True, return_inverse=True)
    row_source = row_source.ravel()
    y, mnist_split = ds.y[first], ds.mnist_split[first]
    for name, per_source, per_row in (("label", y, ds.y), ("mnist_split", mnist_split, ds.mnist_split)):
        conflict = np.flatnonzero(per_source[row_source] != per_row)
        if len(conflict):
            sid = int(ds.source_id[conflict[0]])
            raise PipelineError(f"source image {sid} has rows with different {name}s; the augmented dataset is corrupt")
    return Sources(ids=ids, y=y, mnist_split=mnist_split, row_source=row_source)


def split_sizes(n_sources: int, val_fraction: float, holdout_fraction: float) -> dict[str, int]:
    """How many of `n_sources` MNIST training sources go to train, val and holdout (fractions rounded half up)."""
    for name, value in (("val_fraction", val_fraction), ("holdout_fraction", holdout_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"split.{name} must lie strictly between 0 and 1, got {value}")
    if n_sources < 1:
        raise PipelineError("the augmented dataset has no MNIST training rows (mnist_split == 0) to split")
    n_holdout = math.floor(n_sources * holdout_fraction + 0.5)
    n_val = math.floor(n_sources * val_fraction + 0.5)
    sizes = {"train": n_sources - n_val - n_holdout, "val": n_val, "holdout": n_holdout}
    for name, fraction in (("val", val_fraction), ("holdout", holdout_fraction)):
        if sizes[name] == 0:
            raise PipelineError(
                f"split {name!r} would be empty: split.{name}_fraction={fraction} of {n_sources} MNIST training "
                f"sources rounds to 0; use a {name}_fraction of at least {0.5 / n_sources:.3g}"
            )
    if sizes["train"] < 1:
        raise PipelineError(
            f"split 'train' would be empty: split.val_fraction={val_fraction} and "
            f"split.holdout_fraction={holdout_fraction} take all {n_sources} MNIST training sources; lower them"
        )
    return sizes


def stratified_order(y: np.ndarray, seed: int) -> np.ndarray:
    """A seeded permutation of `range(len(y))` whose every prefix holds each class in proportion (within one)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    labels = y[perm]
    by_class = np.argsort(labels, kind="stable")  # grouped by class, random within each class
    counts = np.bincount(labels, minlength=int(labels.max(initial=0)) + 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(y), np.int64)
    rank[by_class] = np.arange(len(y)) - starts[labels[by_class]]
    # Spread each class evenly over [0, 1); ties between classes keep the random order of `perm`.
    key = (rank + 0.5) / counts[labels]
    return perm[np.argsort(key, kind="stable")]


def assign_sources(sources: Sources, cfg: SplitConfig) -> np.ndarray:
    """The split code (an index into SPLITS) of every source: test for MNIST test sources, else holdout/val/train."""
    train_idx = np.flatnonzero(sources.mnist_split == MNIST_TRAIN)
    if not (sources.mnist_split == MNIST_TEST).any():
        raise PipelineError(
            "the augmented dataset has no MNIST test rows (mnist_split == 1); the 'test' split would be empty"
        )
    sizes = split_sizes(len(train_idx), cfg.val_fraction, cfg.holdout_fraction)
    order = train_idx[stratified_order(sources.y[train_idx], cfg.seed)]
    # The holdout comes first, so it depends only on the seed and holdout_fraction, not on val_fraction.
    codes = np.full(len(sources.ids), TEST, np.int8)
    n_holdout, n_val = sizes["holdout"], sizes["val"]
    codes[order[:n_holdout]] = HOLDOUT
    codes[order[n_holdout : n_holdout + n_val]] = VAL
    codes[order[n_holdout + n_val :]] = TRAIN
    return codes


def row_splits(ds: Dataset, cfg: SplitConfig) -> np.ndarray:
    """The split code (an index into SPLITS) of every row of `ds`; all rows of a source share one code."""
    sources = source_table(ds)
    return assign_sources(sources, cfg)[sources.row_source]


def split_dataset(ds: Dataset, cfg: SplitConfig) -> dict[str, Dataset]:
    """`ds` split by source image into train, val, holdout and test (rows keep their input order)."""
    codes = row_splits(ds, cfg)
    return {name: ds.take(codes == code) for code, name in enumerate(SPLITS)}


def build_manifest(ds: Dataset, codes: np.ndarray) -> dict:
    """DVC metrics: per split, the images, distinct sources, images per class and per angle x class."""
    if len(codes) != len(ds):
        raise ValueError(f"codes has {len(codes)} entries, the dataset {len(ds)} rows")
    n_classes = max(N_CLASSES, int(ds.y.max(initial=0)) + 1)
    angles = np.unique(ds.angle)
    angle_idx = np.searchsorted(angles, ds.angle)
    # One pass over all rows: counts[split, angle, class].
    flat = (codes.astype(np.int64) * len(angles) + angle_idx) * n_classes + ds.y
    counts = np.bincount(flat, minlength=len(SPLITS) * len(angles) * n_classes)
    counts = counts.reshape(len(SPLITS), len(angles), n_classes)
    _, first = np.unique(ds.source_id, return_index=True)
    sources = np.bincount(codes[first], minlength=len(SPLITS))

    def per_class(row: np.ndarray) -> dict[str, int]:
        return {f"class_{c}": int(k) for c, k in enumerate(row)}

    manifest: dict = {"total": {"images": len(ds), "sources": len(first)}}
    for code, name in enumerate(SPLITS):
        manifest[name] = {
            "images": int(counts[code].sum()),
            "sources": int(sources[code]),
            "classes": per_class(counts[code].sum(axis=0)),
            "angles": {f"angle_{int(a)}": per_class(counts[code, i]) for i, a in enumerate(angles)},
        }
    return manifest
