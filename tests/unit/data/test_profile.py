"""The data profile of the downloaded images: counts, classes, pixel statistics and duplicates."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from rotmnist.data import mnist
from rotmnist.data import profile as data_profile
from tests.support.helpers import (
    tiny_mnist,
)


@pytest.fixture(scope="module")
def arrays():
    return tiny_mnist(n_train=50, n_test=20, seed=1)


def test_profile_counts_pixels_and_known_duplicates(arrays):
    x_train, y_train, x_test, y_test = (a.copy() for a in arrays)
    x_train[3], y_train[3] = x_train[0], y_train[0]  # group A: train 0, 3, 5 (5 with another label)
    x_train[5], y_train[5] = x_train[0], (y_train[0] + 1) % 10
    x_test[2], y_test[2] = x_train[7], y_train[7]  # group B: train 7 and test 2
    x_test[4], y_test[4] = x_test[6], y_test[6]  # group C: test 4 and test 6
    ds = mnist.to_dataset(mnist.MnistArrays(x_train, y_train, x_test, y_test))
    profile = data_profile.profile_dataset(ds)
    assert profile["counts"] == {"total": 70, "train": 50, "test": 20}
    assert profile["classes"]["train"] == {str(c): Counter(y_train.tolist())[c] for c in range(10)}
    assert profile["classes"]["test"] == {str(c): Counter(y_test.tolist())[c] for c in range(10)}
    assert profile["duplicates"] == {"images": 4, "groups": 3, "test_in_train": 1, "label_conflicts": 1}
    x = ds.x.astype(np.float64)
    assert profile["pixels"]["min"] == ds.x.min() and profile["pixels"]["max"] == ds.x.max()
    assert profile["pixels"]["mean"] == pytest.approx(x.mean(), abs=1e-5)
    assert profile["pixels"]["std"] == pytest.approx(x.std(), abs=1e-5)
    assert profile["pixels"]["nonzero_fraction"] == pytest.approx((ds.x > 0).mean(), abs=1e-6)
    clean = data_profile.profile_dataset(mnist.to_dataset(mnist.MnistArrays(*arrays)))
    assert clean["duplicates"] == {"images": 0, "groups": 0, "test_in_train": 0, "label_conflicts": 0}
