"""Sliced classification metrics shared by `train` (test split) and `monitor` (holdout split).

Numpy only, so the stages that score predictions do not depend on each other's modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rotmnist.spec import N_CLASSES

ROC_LOG_FLOOR = 1e-4  # the smallest false positive rate the ROC plots resolve


def error_rate(y: np.ndarray, yhat: np.ndarray) -> float:
    """Misclassification rate: the share of positions where `yhat` differs from `y`."""
    return float(np.mean(np.asarray(y) != np.asarray(yhat)))


def _slice(y: np.ndarray, yhat: np.ndarray) -> dict[str, float | int]:
    err = error_rate(y, yhat)
    return {"n": len(y), "accuracy": 1.0 - err, "error_rate": err}


def slice_metrics(
    y: np.ndarray, yhat: np.ndarray, angle: np.ndarray, source_id: np.ndarray | None = None
) -> dict[str, Any]:
    """Accuracy and error overall, per rotation angle and per true class (keys are str for JSON).

    With `source_id`, also `every_angle_errors` (see `every_angle_errors`).
    """
    y, yhat, angle = np.asarray(y), np.asarray(yhat), np.asarray(angle)
    if not (len(y) == len(yhat) == len(angle)) or len(y) == 0:
        raise ValueError(f"need equal, non-zero lengths; got y {len(y)}, yhat {len(yhat)}, angle {len(angle)}")
    per_angle = {str(int(a)): _slice(y[angle == a], yhat[angle == a]) for a in np.unique(angle)}
    per_class = {str(int(c)): _slice(y[y == c], yhat[y == c]) for c in np.unique(y)}
    report = {**_slice(y, yhat), "per_angle": per_angle, "per_class": per_class}
    return report | ({"every_angle_errors": every_angle_errors(y, yhat, source_id)} if source_id is not None else {})


def worst_angle(accuracy: Mapping[int | str, float]) -> tuple[int, float]:
    """The angle (degrees) with the lowest accuracy, and that accuracy; on a tie, the smallest such angle."""
    if not accuracy:
        raise ValueError("no angle to choose the worst of")
    by_angle = {int(a): v for a, v in accuracy.items()}
    worst = min(sorted(by_angle), key=by_angle.__getitem__)
    return worst, by_angle[worst]


def every_angle_errors(y: np.ndarray, yhat: np.ndarray, source_id: np.ndarray) -> dict[str, float | int]:
    """The source digits misread at every one of their rotations, and the share of all errors they make.

    Rotation robustness cannot fix these: they are label noise, or digits that read as another class
    upright too. On MNIST they are a fixed floor under every angle's error (docs/results.md). Only sources
    with at least two rotations count.
    """
    y, yhat, source_id = np.asarray(y), np.asarray(yhat), np.asarray(source_id)
    if not len(y) == len(yhat) == len(source_id):
        raise ValueError(f"need equal lengths; got y {len(y)}, yhat {len(yhat)}, source_id {len(source_id)}")
    wrong = y != yhat
    _, group = np.unique(source_id, return_inverse=True)
    rows, wrong_rows = np.bincount(group), np.bincount(group, weights=wrong)
    always = (rows >= 2) & (wrong_rows == rows)
    n_wrong = int(wrong.sum())
    return {
        "sources": len(rows),
        "sources_wrong_at_every_angle": int(always.sum()),
        "share_of_errors": float(wrong_rows[always].sum() / n_wrong) if n_wrong else 0.0,
    }


def confusion_matrix(y: np.ndarray, yhat: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """Counts (true class, predicted class)."""
    idx = np.asarray(y, np.int64) * n_classes + np.asarray(yhat, np.int64)
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score threshold, from (0, 0) to (1, 1).

    Tied scores form one threshold (one diagonal step), so the area under the curve equals the
    Mann-Whitney probability that a positive outscores a negative, ties counting one half.
    """
    scores, positive = np.asarray(scores, np.float64).ravel(), np.asarray(positive, bool).ravel()
    if len(scores) != len(positive):
        raise ValueError(f"scores has {len(scores)} entries, positive {len(positive)}")
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"a ROC curve needs positives and negatives; got {n_pos} positive, {n_neg} negative")
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # where the threshold changes
    tp = np.cumsum(positive)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a curve given by its points in order of increasing `fpr` (trapezoids)."""
    fpr, tpr = np.asarray(fpr, np.float64), np.asarray(tpr, np.float64)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def one_vs_rest_roc(y: np.ndarray, probs: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """ROC curve of each class against all others, scored by its predicted probability.

    Classes without a positive or without a negative in `y` have no curve and are left out.
    """
    y, probs = np.asarray(y), np.asarray(probs)
    if probs.ndim != 2 or len(probs) != len(y):
        raise ValueError(f"probs must have shape (len(y), classes) = ({len(y)}, k), got {probs.shape}")
    present = np.unique(y)
    return {int(c): roc_curve(probs[:, c], y == c) for c in range(probs.shape[1]) if c in present and len(present) > 1}


def sample_curve(fpr: np.ndarray, tpr: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The curve's true positive rate at each false positive rate of `grid`, linear between its points.

    A vertical step (several points at one false positive rate) is taken at its top, as a plotted curve reads.
    """
    fpr, tpr, grid = np.asarray(fpr), np.asarray(tpr), np.asarray(grid, np.float64)
    left = np.clip(np.searchsorted(fpr, grid, side="right") - 1, 0, len(fpr) - 1)  # the last point at or before
    right = np.minimum(left + 1, len(fpr) - 1)
    span = fpr[right] - fpr[left]
    w = np.divide(grid - fpr[left], span, out=np.zeros_like(grid), where=span > 0)
    return tpr[left] + np.clip(w, 0.0, 1.0) * (tpr[right] - tpr[left])


def roc_grid(points: int, smallest: float = ROC_LOG_FLOOR) -> np.ndarray:
    """False positive rates to sample ROC curves at: 0, then log-spaced up from `smallest`, plus a linear part.

    Good classifiers bend near a false positive rate of 0, so half the points sit on a log scale there.
    """
    if points < 4:
        raise ValueError(f"need at least 4 points, got {points}")
    half = points // 2
    return np.unique(np.r_[0.0, np.geomspace(smallest, 1.0, half), np.linspace(0.0, 1.0, points - half)])
