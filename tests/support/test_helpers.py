"""The synthetic data the other tests build on: tiny MNIST-like digits."""

from __future__ import annotations

import numpy as np

from tests.support.helpers import (
    tiny_mnist,
)


def test_tiny_mnist_has_every_class_distinct_images_and_differing_classes():
    x_train, y_train, x_test, y_test = tiny_mnist(n_train=60, n_test=20, seed=0)
    assert x_train.shape == (60, 28, 28) and x_test.shape == (20, 28, 28)
    assert x_train.dtype == y_train.dtype == np.uint8
    assert set(y_train.tolist()) == set(y_test.tolist()) == set(range(10))
    both = np.concatenate([x_train, x_test]).reshape(80, -1)
    assert len(np.unique(both, axis=0)) == 80
    means = np.stack([x_train[y_train == c].astype(float).mean(0) for c in range(10)])
    gaps = np.abs(means[:, None] - means[None]).sum(axis=(2, 3))
    assert (gaps[~np.eye(10, dtype=bool)] > 0).all()
    np.testing.assert_array_equal(tiny_mnist(60, 20, seed=0)[0], x_train)  # deterministic per seed
    assert not np.array_equal(tiny_mnist(60, 20, seed=1)[0], x_train)
