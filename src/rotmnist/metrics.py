"""Sliced classification metrics shared by `train` (test split) and `monitor` (holdout split).

Numpy only, so the stages that score predictions do not depend on each other's modules.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rotmnist.io import N_CLASSES


def error_rate(y: np.ndarray, yhat: np.ndarray) -> float:
    """Misclassification rate: the share of positions where `yhat` differs from `y`."""
    return float(np.mean(np.asarray(y) != np.asarray(yhat)))


def _slice(y: np.ndarray, yhat: np.ndarray) -> dict[str, float | int]:
    err = error_rate(y, yhat)
    return {"n": len(y), "accuracy": 1.0 - err, "error": err}


def slice_metrics(y: np.ndarray, yhat: np.ndarray, angle: np.ndarray) -> dict[str, Any]:
    """Accuracy and error overall, per rotation angle and per true class (keys are str for JSON)."""
    y, yhat, angle = np.asarray(y), np.asarray(yhat), np.asarray(angle)
    if not (len(y) == len(yhat) == len(angle)) or len(y) == 0:
        raise ValueError(f"need equal, non-zero lengths; got y {len(y)}, yhat {len(yhat)}, angle {len(angle)}")
    per_angle = {str(int(a)): _slice(y[angle == a], yhat[angle == a]) for a in np.unique(angle)}
    per_class = {str(int(c)): _slice(y[y == c], yhat[y == c]) for c in np.unique(y)}
    return {**_slice(y, yhat), "per_angle": per_angle, "per_class": per_class}


def confusion_matrix(y: np.ndarray, yhat: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """Counts (true class, predicted class)."""
    idx = np.asarray(y, np.int64) * n_classes + np.asarray(yhat, np.int64)
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
