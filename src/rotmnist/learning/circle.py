"""Accuracy across the circle: held-out digits turned by angles beyond the ones the model trained on.

`turned` follows the pipeline's rotation (`rotmnist.data.rotation`: bilinear about the centre (13.5, 13.5),
black outside the image, positive angles counter-clockwise as displayed) for any angle, in floating point with
torch's grid sampler; at the trained angles it is within 2 grey levels of the pipeline's integer rotation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from rotmnist.data.dataset import Dataset
from rotmnist.learning.model import turn_grids
from rotmnist.spec import ALLOWED_ANGLES, IMAGE_SHAPE

TRAINED_REACH = max(abs(a) for a in ALLOWED_ANGLES)  # angles beyond this many degrees were never trained on


def turned(x: np.ndarray, angle: float) -> np.ndarray:
    """Images (N, 28, 28) turned `angle` degrees counter-clockwise as displayed, as float32 pixels."""
    if angle == 0:
        return np.array(x, dtype=np.float32)
    images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
    grid = turn_grids([angle]).expand(len(images), *IMAGE_SHAPE, 2)  # the grid orientation pooling turns by
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0].numpy()


def circle_accuracy(
    predict_proba: Callable[[np.ndarray], np.ndarray], data: Dataset, angles: Iterable[int]
) -> dict[str, float]:
    """Accuracy of `predict_proba` on the upright rows of `data` turned by each of `angles` ({"angle": accuracy})."""
    upright = data.take(data.angle == 0)
    if len(upright) == 0:
        raise ValueError("no upright digit to turn: the split holds no row at angle 0")
    out = {}
    for angle in angles:
        right = predict_proba(turned(upright.x, angle)).argmax(axis=1) == upright.y
        out[str(angle)] = float(right.mean())
    return out


def far_angles(accuracy: dict[str, float]) -> dict[str, float]:
    """The entries of a circle's accuracies at angles beyond the trained ones (more than TRAINED_REACH degrees)."""
    return {a: acc for a, acc in accuracy.items() if abs(int(a)) > TRAINED_REACH}
