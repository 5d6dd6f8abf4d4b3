"""The dataset folder format: its reader, its writer and what it refuses."""

import numpy as np
import pytest

from rotmnist.data.dataset import Dataset, load_dataset, save_dataset
from rotmnist.errors import PipelineError
from rotmnist.io import atomic_path


def _dataset(n=5):
    return Dataset(
        x=np.arange(n * 784, dtype=np.uint32).astype(np.uint8).reshape(n, 28, 28),
        y=np.arange(n, dtype=np.uint8) % 10,
        source_id=np.arange(n, dtype=np.int32),
        angle=np.zeros(n, np.int8),
        mnist_split=np.zeros(n, np.int8),
    )


def test_round_trip(tmp_path):
    ds = _dataset()
    save_dataset(ds, tmp_path / "d")
    back = load_dataset(tmp_path / "d")
    for name in ("x", "y", "source_id", "angle", "mnist_split"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ds, name))
        assert getattr(back, name).dtype == getattr(ds, name).dtype
    assert len(load_dataset(tmp_path / "d", mmap=True)) == 5


def test_take_and_concat():
    ds = _dataset(6)
    both = Dataset.concat([ds.take(np.array([0, 1])), ds.take(ds.y > 3)])
    assert both.source_id.tolist() == [0, 1, 4, 5]
    with pytest.raises(ValueError, match="empty list"):
        Dataset.concat([])


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"y": np.zeros(4, np.uint8)}, "has 4 rows, x has 5"),
        ({"y": np.zeros(5, np.int64)}, "dtype uint8"),
        ({"x": np.zeros((5, 28, 27), np.uint8)}, "shape (N, 28, 28)"),
        ({"angle": [0] * 5}, "must be a numpy array"),
    ],
)
def test_invalid_datasets_are_refused(change, fragment):
    fields = _dataset().__dict__ | change
    with pytest.raises((TypeError, ValueError)) as err:
        Dataset(**fields)
    assert fragment in str(err.value)


def test_incomplete_folder_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        load_dataset(tmp_path / "absent")
    save_dataset(_dataset(), tmp_path / "d")
    (tmp_path / "d" / "angle.npy").unlink()
    with pytest.raises(PipelineError, match=r"lacks angle\.npy"):
        load_dataset(tmp_path / "d")
    (tmp_path / "d" / "angle.npy").write_bytes(b"not numpy")
    with pytest.raises(PipelineError, match=r"not a valid \.npy"):
        load_dataset(tmp_path / "d")


def test_failed_write_keeps_the_previous_folder(tmp_path):
    target = tmp_path / "d"
    save_dataset(_dataset(3), target)
    with pytest.raises(RuntimeError), atomic_path(target, is_dir=True) as tmp:
        (tmp / "x.npy").write_bytes(b"half")
        raise RuntimeError("killed")
    assert len(load_dataset(target)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temp leftovers
