"""Rotation of 28x28 digits by the allowed angles, and the two ways of building a rotated dataset.

`rotate(image, angle)` and `generate_dataset(dataset, oversample_rate)` are two of the course
assignment's four fixed prototypes; `exhaustive_dataset` adds every image at every angle (the 490k set).

Rotation is bilinear about the image centre (13.5, 13.5), black outside the image, positive angles
counter-clockwise as displayed (row 0 at the top): `scipy.ndimage.rotate(img, angle, reshape=False,
order=1, mode="grid-constant")` within 2 grey levels (scipy's default mode="constant" differs only where
the source lies less than a pixel outside the image: black there, a blend with black here).
Per angle, every output pixel is a weighted sum of 4 source pixels whose weights are precomputed and
quantised to integers summing to 256, so uint8 images are rotated with exact integer arithmetic:
byte-identical results on every CPU, for any chunk size or number of threads. The batch is transposed
to (784, images) blocks so each tap is a gather of contiguous rows; (angle, block) jobs run in threads
(numpy releases the GIL). Float images take the same path in floating point, without rounding.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np
from tqdm import tqdm

from rotmnist.data.dataset import Dataset
from rotmnist.spec import ALLOWED_ANGLES, IMAGE_SHAPE, ROTATION_CHUNK

log = logging.getLogger(__name__)

DTYPES = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float64))
_PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
_CENTRE = (IMAGE_SHAPE[0] - 1) / 2
_ONE = 256  # fixed-point weight of a whole source pixel
_DTYPE_NAMES = ", ".join(d.name for d in DTYPES)


# --- argument checks --------------------------------------------------------------------------------


def _check_angle(angle: object, name: str = "angle") -> int:
    if isinstance(angle, bool) or not isinstance(angle, numbers.Real):
        raise TypeError(f"{name} must be a number, one of {list(ALLOWED_ANGLES)}; got {type(angle).__name__}")
    if not math.isfinite(angle) or angle not in ALLOWED_ANGLES:
        raise ValueError(f"{name} must be one of {list(ALLOWED_ANGLES)} (degrees); got {angle!r}")
    return int(angle)


def _check_angles(angles: Sequence[int]) -> tuple[int, ...]:
    if isinstance(angles, str | bytes) or not isinstance(angles, Sequence | np.ndarray):
        raise TypeError(f"angles must be a sequence of angles from {list(ALLOWED_ANGLES)}")
    checked = tuple(_check_angle(a, "each of angles") for a in angles)
    if not checked or len(set(checked)) != len(checked):
        raise ValueError(f"angles must be a non-empty list of distinct angles from {list(ALLOWED_ANGLES)}")
    return checked


def _check_images(images: object, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """`images` as given if it is a finite numpy array of `shape` (-1: any length) and an allowed dtype."""
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of shape {_shape_text(shape)}, got {type(images).__name__}")
    if images.ndim != len(shape) or any(want not in (-1, got) for want, got in zip(shape, images.shape, strict=True)):
        raise ValueError(f"{name} must have shape {_shape_text(shape)}, got {images.shape}")
    if images.dtype not in DTYPES:
        raise TypeError(f"{name} must have dtype {_DTYPE_NAMES}; got {images.dtype}")
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        raise ValueError(f"{name} holds NaN or infinite pixels")
    return images


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join("N" if s == -1 else str(s) for s in shape) + ")"


def _check_rate(rate: object) -> float:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise TypeError(f"oversample_rate must be a real number >= 0, got {type(rate).__name__}")
    rate = float(rate)
    if not math.isfinite(rate) or rate < 0:
        raise ValueError(f"oversample_rate must be a finite number >= 0 (below 1 means 2), got {rate}")
    return rate


def _check_upright(ds: Dataset) -> None:
    tilted = np.unique(ds.angle[ds.angle != 0])
    if len(tilted):
        raise ValueError(f"dataset must hold upright images (angle 0) only; it has angles {tilted.tolist()}")


def _check_seed(seed: object) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer >= 0 or a numpy Generator, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be an integer >= 0 or a numpy Generator, got {seed}")
    return np.random.default_rng(int(seed))


def _check_chunk(chunk_size: object) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
        raise TypeError(f"chunk_size must be an integer >= 1, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size}")
    return int(chunk_size)


# --- the rotation engine ----------------------------------------------------------------------------


@functools.cache
def taps(angle: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output pixel, the 4 source pixel indices (4, 784) and fixed-point weights (4, 784) summing to <= 256."""
    angle = _check_angle(angle)
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    row, col = np.mgrid[0 : IMAGE_SHAPE[0], 0 : IMAGE_SHAPE[1]].reshape(2, -1).astype(np.float64) - _CENTRE
    # The source of output pixel (row, col): rotate it back by -angle (display coordinates, y up).
    src_row = _CENTRE + sin * col + cos * row
    src_col = _CENTRE + cos * col - sin * row
    r0, c0 = np.floor(src_row), np.floor(src_col)
    fr, fc = src_row - r0, src_col - c0
    exact = np.stack([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc])
    weights = np.floor(exact * _ONE + 0.5).astype(np.int64)
    # Rounding may leave the four weights off 256 by a unit or two: the largest absorbs it.
    weights[exact.argmax(axis=0), np.arange(_PIXELS)] += _ONE - weights.sum(axis=0)
    rows = np.stack([r0, r0, r0 + 1, r0 + 1]).astype(np.int64)
    cols = np.stack([c0, c0 + 1, c0, c0 + 1]).astype(np.int64)
    inside = (rows >= 0) & (rows < IMAGE_SHAPE[0]) & (cols >= 0) & (cols < IMAGE_SHAPE[1])
    weights[~inside] = 0  # taps outside the image read black
    index = np.where(inside, rows * IMAGE_SHAPE[1] + cols, 0).astype(np.intp)
    weights = weights.astype(np.uint16)
    index.flags.writeable = weights.flags.writeable = False  # cached: shared by every call
    return index, weights


def _to_blocks(images: np.ndarray, size: int) -> np.ndarray:
    """Images (N, 28, 28) as (blocks, 784, size): each block transposed, the last one padded with zeros."""
    n = len(images)
    flat = images.reshape(n, _PIXELS)
    n_blocks, full = -(-n // size), n // size
    blocks = np.empty((n_blocks, _PIXELS, size), images.dtype)
    blocks[:full] = flat[: full * size].reshape(full, size, _PIXELS).transpose(0, 2, 1)
    if full < n_blocks:
        blocks[full] = 0
        blocks[full, :, : n - full * size] = flat[full * size :].T
    return blocks


class _BlockRotator:
    """Rotates (784, size) blocks of one dtype, in scratch buffers of its own (one per thread)."""

    def __init__(self, dtype: np.dtype, size: int) -> None:
        self.integer = dtype == np.uint8
        work = np.uint16 if self.integer else dtype
        self.gathered = np.empty((_PIXELS, size), dtype)
        self.acc, self.term = np.empty((_PIXELS, size), work), np.empty((_PIXELS, size), work)

    def __call__(self, block: np.ndarray, angle: int) -> np.ndarray:
        index, weights = taps(angle)
        if not self.integer:
            weights = weights / self.acc.dtype.type(_ONE)
        for q in range(4):
            # mode="clip" (the indices are valid anyway) lets take() write straight into `out`.
            np.take(block, index[q], axis=0, out=self.gathered, mode="clip")
            np.multiply(self.gathered, weights[q][:, None], out=self.term if q else self.acc, dtype=self.acc.dtype)
            if q:
                np.add(self.acc, self.term, out=self.acc)
        if not self.integer:
            return self.acc
        np.add(self.acc, _ONE // 2, out=self.acc)  # round half up; at most 255 * 256 + 128 < 2**16
        np.right_shift(self.acc, 8, out=self.acc)
        np.copyto(self.gathered, self.acc, casting="unsafe")
        return self.gathered


def default_workers() -> int:
    """Threads for the rotation: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _rotate_into(
    images: np.ndarray,
    angles: Sequence[int],
    out: np.ndarray,
    *,
    chunk_size: int = ROTATION_CHUNK,
    workers: int | None = None,
    progress: bool = False,
) -> None:
    """out[k] = images rotated by angles[k], for `out` of shape (len(angles), N, 784) and the images' dtype."""
    n = len(images)
    if n == 0:
        return
    size = min(chunk_size, n)
    blocks = _to_blocks(images, size)
    jobs = [(k, j) for k in range(len(angles)) for j in range(len(blocks))]
    local = threading.local()

    def run(k: int, j: int) -> int:
        if not hasattr(local, "rotate_block"):
            local.rotate_block = _BlockRotator(images.dtype, size)
        start = j * size
        count = min(size, n - start)
        out[k, start : start + count] = local.rotate_block(blocks[j], angles[k])[:, :count].T
        return count

    workers = min(workers or default_workers(), len(jobs))
    if workers <= 1 and not progress:  # one image (rotate()) or one thread: no pool, no bar
        for job in jobs:
            run(*job)
        return
    with (
        tqdm(
            total=n * len(angles), unit="img", desc="rotating", disable=None if progress else True, leave=False
        ) as bar,
        ThreadPoolExecutor(workers, thread_name_prefix="rotate") as pool,
    ):
        for future in as_completed([pool.submit(run, *job) for job in jobs]):
            bar.update(future.result())


# --- public functions -------------------------------------------------------------------------------


def rotate_batch(
    images: np.ndarray, angle: int, *, chunk_size: int = ROTATION_CHUNK, workers: int | None = None
) -> np.ndarray:
    """Rotate every image of an (N, 28, 28) uint8/float32/float64 array by an allowed angle (workers None: all CPUs)."""
    images = _check_images(images, "images", (-1, *IMAGE_SHAPE))
    angle = _check_angle(angle)
    out = np.empty((1, len(images), _PIXELS), images.dtype)
    _rotate_into(images, [angle], out, chunk_size=_check_chunk(chunk_size), workers=workers)
    return out.reshape(images.shape)


def rotate(image: np.ndarray, angle: int) -> np.ndarray:
    """Rotate one 28x28 image by one of -30, -20, -10, +10, +20, +30 degrees."""
    image = _check_images(image, "image", IMAGE_SHAPE)
    angle = _check_angle(angle)
    rotated_image = rotate_batch(image[None], angle, workers=1)[0]  # the batched path, so the very same pixels
    return rotated_image


def exhaustive_dataset(
    ds: Dataset, angles: Sequence[int] = ALLOWED_ANGLES, *, chunk_size: int = ROTATION_CHUNK, progress: bool = False
) -> Dataset:
    """Upright `ds` plus every image rotated by every angle: originals first, then one block per angle."""
    if not isinstance(ds, Dataset):
        raise TypeError(f"ds must be a rotmnist.data.dataset.Dataset, got {type(ds).__name__}")
    angles = _check_angles(angles)
    _check_upright(ds)
    n, copies = len(ds), 1 + len(angles)
    x = np.empty((copies, n, _PIXELS), np.uint8)
    x[0] = ds.x.reshape(n, _PIXELS)
    _rotate_into(ds.x, angles, x[1:], chunk_size=_check_chunk(chunk_size), progress=progress)
    return Dataset(
        x=x.reshape(copies * n, *IMAGE_SHAPE),
        y=np.tile(ds.y, copies),
        source_id=np.tile(ds.source_id, copies),
        angle=np.repeat(np.array((0, *angles), np.int8), n),
        mnist_split=np.tile(ds.mnist_split, copies),
    )


def generate_dataset(
    dataset: Dataset | np.ndarray,
    oversample_rate: float,
    *,
    seed: int | np.random.Generator = 0,
    angles: Sequence[int] = ALLOWED_ANGLES,
    chunk_size: int = ROTATION_CHUNK,
) -> Dataset | np.ndarray:
    """Append int(n * (rate - 1)) randomly drawn images, each rotated by a random angle (rate < 1 means 2).

    `dataset` is an upright `Dataset` (returns a Dataset whose new rows carry their source's y,
    source_id and mnist_split, and the angle drawn) or an (N, 28, 28) uint8/float32/float64 array
    (returns an array of the same dtype). The originals come first, then the new images in draw order.
    The count is n * (oversample_rate - 1.0) in floating point, truncated toward zero by int(): 10
    images at rate 2.55 gain 15. `seed` (an int, or a numpy Generator to draw from) first draws every
    source index, then every angle, uniformly.
    """
    if isinstance(dataset, Dataset):
        _check_upright(dataset)
        images = dataset.x
    elif isinstance(dataset, np.ndarray):
        images = _check_images(dataset, "dataset", (-1, *IMAGE_SHAPE))
    else:
        raise TypeError(
            "dataset must be a rotmnist.data.dataset.Dataset or a numpy array of shape (N, 28, 28), "
            f"got {type(dataset).__name__}"
        )
    oversample_rate = _check_rate(oversample_rate)
    angles = np.array(_check_angles(angles), np.int8)
    rng = _check_seed(seed)
    chunk_size = _check_chunk(chunk_size)

    oversample_rate = 2 if oversample_rate < 1 else oversample_rate
    n = len(images)
    to_generate_count = int(n * (oversample_rate - 1.0))
    source = rng.integers(0, max(n, 1), size=to_generate_count)  # n == 0 draws nothing
    drawn = angles[rng.integers(0, len(angles), size=to_generate_count)]

    x = np.empty((n + to_generate_count, _PIXELS), images.dtype)  # filled in place: no concatenation copy
    x[:n] = images.reshape(n, _PIXELS)
    for angle in np.unique(drawn).tolist():  # one batched rotation per angle, scattered back in draw order
        rows = np.flatnonzero(drawn == angle)
        rotated = np.empty((1, len(rows), _PIXELS), images.dtype)
        _rotate_into(images[source[rows]], [angle], rotated, chunk_size=chunk_size)
        x[n + rows] = rotated[0]
    x = x.reshape(len(x), *IMAGE_SHAPE)
    if not isinstance(dataset, Dataset):
        updated_dataset = x
        return updated_dataset
    updated_dataset = Dataset(
        x=x,
        y=np.concatenate([dataset.y, dataset.y[source]]),
        source_id=np.concatenate([dataset.source_id, dataset.source_id[source]]),
        angle=np.concatenate([dataset.angle, drawn]),
        mnist_split=np.concatenate([dataset.mnist_split, dataset.mnist_split[source]]),
    )
    return updated_dataset
