"""Atomic writes and the dataset folder format."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rotmnist.errors import PipelineError
from rotmnist.io import Dataset, atomic_path, load_dataset, save_dataset, write_csv, write_json, write_metrics


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


def test_failed_write_keeps_the_previous_folder(tmp_path):
    target = tmp_path / "d"
    save_dataset(_dataset(3), target)
    with pytest.raises(RuntimeError), atomic_path(target, is_dir=True) as tmp:
        (tmp / "x.npy").write_bytes(b"half")
        raise RuntimeError("killed")
    assert len(load_dataset(target)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temp leftovers


def test_failed_file_write_leaves_nothing(tmp_path):
    target = tmp_path / "m.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("{")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}


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


def test_write_csv_writes_a_header_and_one_line_per_row(tmp_path):
    path = tmp_path / "plots" / "t.csv"
    write_csv(path, [{"angle": -10, "accuracy": 0.5}, {"angle": 0, "accuracy": 1.0}])
    assert path.read_text() == "angle,accuracy\n-10,0.5\n0,1.0\n"
    assert not list(path.parent.glob(".*"))  # no temporary file left behind


def test_write_metrics_refuses_what_dvc_cannot_show_and_names_the_keys(tmp_path):
    path = tmp_path / "m.json"
    good = {"a": 1, "b": {"c": 0.5, "d": True, "e": "passed"}}
    write_metrics(path, good)
    assert json.loads(path.read_text()) == good
    bad = {"a": None, "b": {"c": [1, 2], "d": float("nan"), "ok": 1}, "e": float("inf")}
    with pytest.raises(ValueError, match=r"a: None; b\.c: \[1, 2\]; b\.d: nan; e: inf"):
        write_metrics(path, bad)
    with pytest.raises(ValueError, match=r"b\.error: DVC reads a key named 'error' as a failed load"):
        write_metrics(path, {"b": {"error": 0.1}})
    with pytest.raises(ValueError, match=r"<top>: \[1\]"):
        write_metrics(path, [1])
    assert json.loads(path.read_text()) == good  # the previous file stays


def test_temporary_siblings_of_dead_writers_are_removed_and_those_of_live_ones_kept(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead, alive = proc.pid, os.getppid()
    target = tmp_path / "splits"
    stale = [tmp_path / f".splits.tmp-{dead}-abc", tmp_path / f".splits.old-{dead}"]
    kept = [tmp_path / f".splits.tmp-{alive}-def", tmp_path / f".other.tmp-{dead}-ghi", tmp_path / ".splits.tmp-x"]
    for folder in stale + kept:
        (folder / "train").mkdir(parents=True)
    with atomic_path(target, is_dir=True) as tmp:
        assert tmp.name.startswith(f".splits.tmp-{os.getpid()}-")
        assert not any(p.exists() for p in stale)
        (tmp / "x.npy").write_bytes(b"")
    assert all(p.exists() for p in kept) and (target / "x.npy").exists()
