"""Fixtures of the data tests."""

from __future__ import annotations

import pytest

from tests.support.helpers import tiny_mnist


@pytest.fixture(scope="module")
def arrays():
    """A tiny MNIST: 50 train and 20 test synthetic digits, as (x_train, y_train, x_test, y_test)."""
    return tiny_mnist(n_train=50, n_test=20, seed=1)
