"""The data profile the `download` stage writes: counts, class balance, pixel statistics, exact duplicates."""

from __future__ import annotations

from typing import Any

import numpy as np

from rotmnist.data.dataset import IMAGE_CHUNK, MNIST_TEST, Dataset
from rotmnist.spec import N_CLASSES


def duplicate_stats(x: np.ndarray, y: np.ndarray, is_test: np.ndarray) -> dict[str, int]:
    """Exact (byte-identical) duplicate images: extra copies, groups, test images also in train, label conflicts."""
    flat = np.ascontiguousarray(x).reshape(len(x), -1)
    keys = flat.view(np.dtype((np.void, flat.shape[1]))).ravel()
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    in_train = np.zeros(len(counts), bool)
    in_train[inverse[~is_test]] = True
    lo = np.full(len(counts), N_CLASSES, np.int16)
    hi = np.full(len(counts), -1, np.int16)
    np.minimum.at(lo, inverse, y)
    np.maximum.at(hi, inverse, y)
    return {
        "images": int(len(x) - len(counts)),  # copies beyond the first of each distinct image
        "groups": int((counts > 1).sum()),  # distinct images that occur more than once
        "test_in_train": int(in_train[inverse[is_test]].sum()),  # test images with an exact copy in train
        "label_conflicts": int((lo != hi).sum()),  # distinct images seen with more than one label
    }


def pixel_summary(x: np.ndarray) -> dict[str, float]:
    """Min, max, mean, std of all pixel values and the mean fraction of nonzero pixels, from one histogram."""
    flat = x.reshape(len(x), -1)
    hist = np.zeros(256, np.int64)
    for start in range(0, len(flat), IMAGE_CHUNK):
        hist += np.bincount(flat[start : start + IMAGE_CHUNK].ravel(), minlength=256)
    values = np.arange(256, dtype=np.float64)
    total = hist.sum()
    mean = float(hist @ values / total)
    std = float(np.sqrt(max(hist @ values**2 / total - mean**2, 0.0)))
    used = np.flatnonzero(hist)
    return {
        "min": int(used[0]),
        "max": int(used[-1]),
        "mean": round(mean, 6),
        "std": round(std, 6),
        "nonzero_fraction": round(float(1 - hist[0] / total), 6),
    }


def profile_dataset(ds: Dataset) -> dict[str, Any]:
    """Counts, class balance per split, pixel statistics and exact duplicates: the stage's DVC metrics."""
    if len(ds) == 0:
        raise ValueError("cannot profile an empty dataset")
    is_test = ds.mnist_split == MNIST_TEST
    masks = {"train": ~is_test, "test": is_test}
    return {
        "counts": {"total": len(ds), "train": int((~is_test).sum()), "test": int(is_test.sum())},
        "classes": {
            split: {str(c): int(k) for c, k in enumerate(np.bincount(ds.y[mask], minlength=N_CLASSES))}
            for split, mask in masks.items()
        },
        "pixels": pixel_summary(ds.x),
        "duplicates": duplicate_stats(ds.x, ds.y, is_test),
    }
