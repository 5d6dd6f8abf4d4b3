"""The augment stage: it dispatches on the configured strategy."""

from __future__ import annotations

import numpy as np
import pytest

from rotmnist.config import AugmentConfig
from rotmnist.data.dataset import Dataset
from rotmnist.data.mnist import MnistArrays, to_dataset
from rotmnist.data.rotation import exhaustive_dataset, generate_dataset
from rotmnist.stages import augment
from tests.support.helpers import tiny_mnist


@pytest.fixture(scope="module")
def tiny() -> Dataset:
    return to_dataset(MnistArrays(*tiny_mnist(n_train=8, n_test=2, seed=4)))


def test_augment_dispatches_on_the_strategy(tiny):
    exhaustive = augment.augment(tiny, AugmentConfig(angles=(10, 20)))
    assert exhaustive.x.tobytes() == exhaustive_dataset(tiny, [10, 20]).x.tobytes()
    cfg = AugmentConfig(strategy="random", oversample_rate=3.0, seed=7, angles=(-30, 30))
    randomised = augment.augment(tiny, cfg)
    assert len(randomised) == 30
    expected = generate_dataset(tiny, 3.0, seed=7, angles=(-30, 30))
    assert randomised.x.tobytes() == expected.x.tobytes()
    np.testing.assert_array_equal(randomised.source_id, expected.source_id)
