"""Small datasets (`rotmnist.data.dataset.Dataset`) built for a test: synthetic digits as sources, or blank
images with given labels."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from rotmnist.data.dataset import Dataset
from tests.support.helpers import tiny_mnist


def digit_dataset(n: int, seed: int = 0, copies: int = 1) -> Dataset:
    """`n` synthetic digits (easy: jittered seven-segment strokes), each repeated `copies` times as one source."""
    x, y, _, _ = tiny_mnist(n_train=n, n_test=10, seed=seed)
    k = len(x)
    return Dataset(
        x=np.repeat(x, copies, axis=0),
        y=np.repeat(y, copies),
        source_id=np.repeat(np.arange(k, dtype=np.int32), copies),
        angle=np.zeros(k * copies, np.int8),
        mnist_split=np.zeros(k * copies, np.int8),
    )


def upright(x: np.ndarray, y: np.ndarray, first_id: int = 0) -> Dataset:
    """The images `x` labelled `y`, upright, one source each, numbered from `first_id`."""
    n = len(x)
    ids = np.arange(first_id, first_id + n, dtype=np.int32)
    return Dataset(x=x, y=y, source_id=ids, angle=np.zeros(n, np.int8), mnist_split=np.zeros(n, np.int8))


def blank_dataset(y, angle=None) -> Dataset:
    """Blank images labelled `y`, at the angles `angle` (upright where None), one source each."""
    y = np.asarray(y, np.uint8)
    n = len(y)
    return Dataset(
        x=np.zeros((n, 28, 28), np.uint8),
        y=y,
        source_id=np.arange(n, dtype=np.int32),
        angle=np.zeros(n, np.int8) if angle is None else np.asarray(angle, np.int8),
        mnist_split=np.zeros(n, np.int8),
    )


def stack_angles(raw: Dataset, angles: Sequence[int]) -> Dataset:
    """An augmented-like dataset: `raw` (angle 0) followed by one copy of it per angle (pixels not rotated)."""
    copies = [dataclasses.replace(raw, angle=np.full(len(raw), a, np.int8)) for a in angles]
    return Dataset.concat([raw, *copies])
