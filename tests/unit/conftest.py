"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from rotmnist.data.dataset import Dataset
from rotmnist.data.rotation import exhaustive_dataset
from tests.support.datasets import upright
from tests.support.helpers import tiny_mnist


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine OpenMP threads only wait for each other."""
    import torch  # here, not at the top: the unit tests that train nothing need not load it

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def splits() -> tuple[Dataset, Dataset]:
    """Synthetic train and holdout digits, each at every angle (as data/splits holds them)."""
    xt, yt, xh, yh = tiny_mnist(n_train=400, n_test=200, seed=0)
    return exhaustive_dataset(upright(xt, yt)), exhaustive_dataset(upright(xh, yh, first_id=1000))
