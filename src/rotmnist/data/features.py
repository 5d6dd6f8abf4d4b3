"""Label-free features of 28x28 digits, vectorised over a batch: tilt, ink mass and the size of the inked box.

They describe what comes in without knowing the answer, so the server can watch its inputs and a drift
check can compare them with the training data. Images are (N, 28, 28) arrays of pixels 0-255 (uint8 or
float), white ink on black, row 0 at the top.

`tilt_degrees` is the angle of the ink's principal axis (from its second-order central moments) from
vertical, in (-90, 90]: positive is counter-clockwise as displayed, the direction in which
`rotation.rotate(image, angle)` turns a digit for a positive `angle`, so rotating a digit by +30 adds
about 30 to its tilt. An image without ink has tilt 0, ink mass 0 and an empty box (0, 0).
"""

from __future__ import annotations

import numpy as np

from rotmnist.spec import IMAGE_SHAPE

INK_THRESHOLD = 64  # a pixel above this (0-255) counts as ink for the bounding box: faint noise does not

_ROWS = np.arange(IMAGE_SHAPE[0], dtype=np.float64) - (IMAGE_SHAPE[0] - 1) / 2
_COLS = np.arange(IMAGE_SHAPE[1], dtype=np.float64) - (IMAGE_SHAPE[1] - 1) / 2


def _checked(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"images must have shape (N, {IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]}), got {x.shape}")
    return x


def ink_mass(x: np.ndarray) -> np.ndarray:
    """The ink of each image, in full-white pixels (sum of pixels / 255): (N,) float64."""
    return _checked(x).sum(axis=(1, 2), dtype=np.float64) / 255.0


def bbox_size(x: np.ndarray, threshold: int = INK_THRESHOLD) -> np.ndarray:
    """Height and width of the box holding every pixel above `threshold`: (N, 2) int64; (0, 0) without ink."""
    ink = _checked(x) > threshold
    return np.stack([_extent(ink.any(axis=2)), _extent(ink.any(axis=1))], axis=1)


def _extent(profile: np.ndarray) -> np.ndarray:
    """From the first to the last True of each row of `profile` (N, L), inclusive; 0 for rows without one."""
    length = profile.shape[1]
    first = profile.argmax(axis=1)
    last = length - 1 - profile[:, ::-1].argmax(axis=1)
    return np.where(profile.any(axis=1), last - first + 1, 0).astype(np.int64)


def tilt_degrees(x: np.ndarray) -> np.ndarray:
    """The angle of each image's principal axis from vertical, counter-clockwise positive: (N,) in (-90, 90]."""
    w = _checked(x).astype(np.float64)
    mass = w.sum(axis=(1, 2))
    rows, cols = w.sum(axis=2), w.sum(axis=1)  # the ink per row and per column
    safe = np.where(mass > 0, mass, 1.0)  # no ink: every moment is 0 and so is the tilt
    mean_r, mean_c = rows @ _ROWS / safe, cols @ _COLS / safe
    mu_rr = rows @ _ROWS**2 / safe - mean_r**2
    mu_cc = cols @ _COLS**2 / safe - mean_c**2
    mu_rc = (w @ _COLS) @ _ROWS / safe - mean_r * mean_c
    # With y up (y = -row) the axis leans counter-clockwise when ink lower down sits further right: mu_rc > 0.
    tilt = 0.5 * np.degrees(np.arctan2(2 * mu_rc, mu_rr - mu_cc))
    return np.where(tilt <= -90.0, 90.0, tilt)  # a horizontal axis is +90, never -90
