"""Digits as people have them (image files of any size, `.npy` arrays) turned into MNIST's format.

MNIST's digits are white ink on black, 28x28, the ink scaled to fit 20x20 and centred by its centre of
mass; `to_mnist_image` prepares a drawn or photographed digit the same way, for `rotmnist predict`
and the HTTP service alike. Every image file goes through it whatever its size (a 28x28 drawing can be
off-centre too; an MNIST digit comes back almost unchanged); arrays (`.npy`, JSON) are already the
model's input and are only checked. Uploads to the HTTP service are decoded here too (`decode_files`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from rotmnist.errors import PipelineError
from rotmnist.spec import IMAGE_SHAPE


class ImageTooLarge(PipelineError):
    """An image whose width x height is over the allowed number of pixels (checked before it is decoded)."""


def pixel_problem(x: np.ndarray) -> str | None:
    """What is wrong with raw pixels `x` (NaN, outside 0..255, or scaled to 0..1), or None if nothing.

    Pixels look scaled to 0..1 when some are above 0 and none is above 1, whatever their type (a binary
    digit of 0 and 1 is as wrong as 0.0 and 1.0): the rule reads values only, so the HTTP service's JSON
    Schema states it exactly. Every entry point (`learn_model`, `rotmnist predict`, the HTTP service)
    refuses such images the same way, rather than guessing a scale: an almost-black 0..255 image is also
    within 0..1.
    """
    if x.size == 0:
        return None
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        return "pixels hold NaN or infinite values"
    lo, hi = x.min(), x.max()
    if lo < 0 or hi > 255:
        return f"pixels must be in 0..255, got values in [{lo}, {hi}]"
    if 0 < hi <= 1:
        return "pixels look scaled to [0, 1]; pass values in 0..255 (multiply by 255)"
    return None


def to_mnist_image(gray: np.ndarray) -> np.ndarray:
    """A grayscale image (H, W) as MNIST sees digits: 28x28 uint8, white ink on black.

    A mostly light image (mean > 127.5) is taken to be dark ink on light paper and inverted. Then,
    whatever the size, it is cropped to its ink, scaled to fit 20x20 (aspect kept) and placed in 28x28
    with its centre of mass in the middle, as MNIST's digits were.
    """
    from PIL import Image

    g = np.asarray(gray, dtype=np.float32)
    if g.ndim != 2 or g.size == 0:
        raise ValueError(f"expected a 2-D grayscale image, got shape {g.shape}")
    if g.mean() > 127.5:
        g = 255.0 - g
    g = np.clip(g, 0, 255)
    if g.max() <= 0:
        return np.zeros((28, 28), np.uint8)
    rows, cols = np.nonzero(g > 0.2 * g.max())
    crop = g[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = 20.0 / max(crop.shape)
    h, w = (max(1, round(s * scale)) for s in crop.shape)
    small = np.asarray(Image.fromarray(crop).resize((w, h), Image.Resampling.BILINEAR), np.float32)
    total = small.sum()
    if total > 0:
        cy = (small.sum(axis=1) * np.arange(h)).sum() / total
        cx = (small.sum(axis=0) * np.arange(w)).sum() / total
    else:
        cy, cx = (h - 1) / 2, (w - 1) / 2
    top = int(np.clip(round(13.5 - cy), 0, 28 - h))
    left = int(np.clip(round(13.5 - cx), 0, 28 - w))
    out = np.zeros((28, 28), np.float32)
    out[top : top + h, left : left + w] = small
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8)


def read_image(source: str | Path | BinaryIO, name: str | None = None, max_pixels: int | None = None) -> np.ndarray:
    """An image file or stream (PNG, JPEG, ...; any size or mode) as a 28x28 uint8 MNIST-style digit.

    With transparency, the alpha channel is the ink (a digit drawn on a transparent canvas); a photo's
    EXIF orientation is applied. An image over `max_pixels` (width x height) raises ImageTooLarge before
    its pixels are decoded; anything that does not decode raises PipelineError naming `name` (or the path).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = name or str(source)
    try:
        with Image.open(source) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ImageTooLarge(f"{name}: {img.width}x{img.height} pixels is over the limit of {max_pixels}")
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                alpha = np.asarray(img.convert("RGBA"))[..., 3]
                if alpha.min() < 255:
                    return to_mnist_image(alpha)
            return to_mnist_image(np.asarray(img.convert("L")))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise PipelineError(f"cannot read {name} as an image: {err}") from None


def read_npy(path: str | Path) -> np.ndarray:
    """A .npy array of raw images (N, 28, 28) or one image (28, 28), pixel values 0-255, as float32."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise PipelineError(f"cannot read {path} as a .npy array: {err}") from None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (28, 28) or arr.dtype.kind not in "uif":
        raise PipelineError(f"{path}: expected a numeric array of shape (N, 28, 28), got {arr.dtype} {arr.shape}")
    if len(arr) == 0:
        raise PipelineError(f"{path} holds no images (shape {arr.shape})")
    arr = arr.astype(np.float32)
    problem = pixel_problem(arr)
    if problem:
        raise PipelineError(f"{path}: {problem}")
    return arr


def read_images(files: Sequence[str | Path], max_bytes: int | None = None) -> tuple[list[str], np.ndarray]:
    """Names and float32 (N, 28, 28) images from image files (PNG, JPEG, ...) and/or .npy arrays.

    A file over `max_bytes` is refused before it is read.
    """
    names: list[str] = []
    batches: list[np.ndarray] = []
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise PipelineError(f"{path} does not exist")
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise PipelineError(
                f"{path} is {size / 2**20:.1f} MiB, over the limit of {max_bytes / 2**20:g} MiB "
                "(predict.max_file_mb in params.yaml); split the batch into smaller files"
            )
        if path.suffix.lower() == ".npy":
            arr = read_npy(path)
            names += [f"{path}[{i}]" for i in range(len(arr))]
            batches.append(arr)
        else:
            names.append(str(path))
            batches.append(read_image(path)[None].astype(np.float32))
    if not batches:
        raise PipelineError("no images given")
    return names, np.concatenate(batches)


def decode_files(files: list[tuple[str, bytes]], max_pixels: int) -> tuple[list[str], np.ndarray]:
    """Names and MNIST-prepared float32 images of uploaded files `(name, bytes)`, each named `file <i>` in errors.

    A file over `max_pixels` raises ImageTooLarge; one that does not decode raises PipelineError.
    """
    names, x = [], np.zeros((len(files), *IMAGE_SHAPE), np.float32)
    for i, (name, data) in enumerate(files):
        label = f"file {i + 1}"
        try:
            x[i] = read_image(io.BytesIO(data), name=label, max_pixels=max_pixels)
        except ImageTooLarge:
            raise
        except PipelineError:
            raise PipelineError(f"{label} is not an image that can be decoded (PNG, JPEG, ...)") from None
        names.append(name)
    return names, x
