"""The concept drift check (holdout check) and the promotion gate: pure functions over predictions and metrics.

Concept drift: the model's error on labelled held-out digits above a threshold, that is, what users
expect of an input has moved away from what the model answers. Not to be confused with input drift
(`learning.drift`, `rotmnist drift`), an unlabelled shift of the inputs. `monitor_perf` is one of the
course assignment's four fixed prototypes: a model, labelled ground truth and an error threshold in, a
drift flag (concept drift) out. `decide` is the gate the stage `monitor` applies before it
moves the registry's `champion` alias.
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rotmnist.learning.metrics import error_rate
from rotmnist.spec import N_CLASSES

if TYPE_CHECKING:
    from rotmnist.config import MonitorConfig

log = logging.getLogger(__name__)

# The gate's decision, stored as a model version tag; the registry's fallback trusts only "passed".
GATE_TAG = "gate"
GATE_PASSED, GATE_FAILED = "passed", "failed"


def is_concept_drift(error: float, threshold: float) -> bool:
    """The concept drift rule used everywhere: an error strictly above its threshold."""
    return error > threshold


def _check_threshold(threshold: Any, name: str = "threshold") -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(threshold).__name__} {threshold!r}")
    if not (0.0 <= float(threshold) <= 1.0):
        raise ValueError(f"{name} must be within [0, 1] (an error rate), got {threshold!r}")
    return float(threshold)


def monitor_perf(model, ground_truth_dataset, threshold):
    """Return True ("drift", concept drift) when the model's error rate on the ground truth exceeds `threshold`.

    `model` needs `.predict(x) -> labels`; `ground_truth_dataset` needs `.x` (images) and `.y` (labels),
    as `rotmnist.data.dataset.Dataset` has; `threshold` is an error rate in [0, 1].
    """
    threshold = _check_threshold(threshold)
    if not callable(getattr(model, "predict", None)):
        raise TypeError(f"model must have a predict(x) method returning labels, got {type(model).__name__}")
    if not (hasattr(ground_truth_dataset, "x") and hasattr(ground_truth_dataset, "y")):
        raise TypeError(f"ground_truth_dataset must have .x and .y, got {type(ground_truth_dataset).__name__}")
    x, y = np.asarray(ground_truth_dataset.x), np.asarray(ground_truth_dataset.y)
    if y.ndim != 1:
        raise ValueError(f"ground_truth_dataset.y must be one-dimensional, got shape {y.shape}")
    if len(y) == 0:
        raise ValueError("ground_truth_dataset is empty: the concept drift check needs at least one labelled image")
    if len(x) != len(y):
        raise ValueError(f"ground_truth_dataset has {len(x)} images but {len(y)} labels")
    yhat = np.asarray(model.predict(x))
    if yhat.shape != y.shape:
        raise ValueError(
            f"model.predict returned shape {yhat.shape} for {len(y)} images; expected one label per image {y.shape}"
        )
    error = error_rate(y, yhat)
    log.debug("monitor_perf: error %.4f vs threshold %.4f", error, threshold)
    return is_concept_drift(error, threshold)


# ---- the promotion gate ---------------------------------------------------------------------------


def concept_drift_reasons(metrics: dict[str, Any], threshold: float, angle_threshold: float) -> list[str]:
    """Why the holdout metrics count as concept drift: the overall error or any angle's error above its threshold."""
    reasons = []
    if is_concept_drift(metrics["error_rate"], threshold):
        reasons.append(f"holdout error {metrics['error_rate']:.2%} > monitor.threshold {threshold:.2%}")
    for angle, m in metrics["per_angle"].items():
        if is_concept_drift(m["error_rate"], angle_threshold):
            reasons.append(
                f"error at {angle} deg {m['error_rate']:.2%} > monitor.angle_threshold {angle_threshold:.2%}"
            )
    return reasons


def regression_reasons(
    candidate: dict[str, Any], champion: dict[str, Any], tolerance: float, champion_label: str = "the champion"
) -> list[str]:
    """Slices (overall, each angle) where the candidate's accuracy is below the champion's by more than `tolerance`."""
    slices = [("overall", candidate, champion)]
    slices += [
        (f"at {a} deg", candidate["per_angle"][a], champion["per_angle"][a])
        for a in candidate["per_angle"]
        if a in champion["per_angle"]
    ]
    reasons = []
    for label, cand, champ in slices:
        drop = champ["accuracy"] - cand["accuracy"]
        if drop > tolerance + 1e-12:
            reasons.append(
                f"accuracy {label} {cand['accuracy']:.2%} is {drop:.2%} below {champion_label} "
                f"({champ['accuracy']:.2%}), beyond monitor.tolerance {tolerance:.2%}"
            )
    return reasons


@dataclass(frozen=True)
class Gate:
    """The promotion decision: concept drift flag, whether the candidate becomes champion, and why not."""

    concept_drift: bool
    promoted: bool
    reasons: tuple[str, ...]

    @property
    def decision(self) -> str:
        return GATE_PASSED if self.promoted else GATE_FAILED


def feedback_reasons(feedback: dict[str, Any] | None, threshold: float | None) -> list[str]:
    """Why the held-out corrections count as concept drift: error above `monitor.feedback_threshold` (None: off)."""
    if threshold is None or not feedback or not is_concept_drift(feedback["error_rate"], threshold):
        return []
    return [f"error on the feedback slice {feedback['error_rate']:.2%} > monitor.feedback_threshold {threshold:.2%}"]


def far_reasons(far: dict[str, float] | None, threshold: float | None) -> list[str]:
    """Why the holdout beyond the trained angles counts as concept drift: at some angle there (`far`: accuracy
    per angle), an error above `monitor.far_threshold` (None: off)."""
    if threshold is None or not far:
        return []
    return [
        f"holdout error at {a} deg (beyond the trained angles) {1 - acc:.2%} > monitor.far_threshold {threshold:.2%}"
        for a, acc in far.items()
        if is_concept_drift(1 - acc, threshold)
    ]


def decide(
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    cfg: MonitorConfig,
    champion_label: str = "the champion",
    feedback: dict[str, Any] | None = None,
    far: dict[str, float] | None = None,
) -> Gate:
    """Pass only with no concept drift and, if there is a champion, no slice worse than it beyond the tolerance.

    `feedback`: the candidate's metrics on the held-out corrections, gated by `monitor.feedback_threshold`;
    `far`: its holdout accuracy per angle beyond the trained ones, gated by `monitor.far_threshold`.
    """
    drift = concept_drift_reasons(candidate, cfg.threshold, cfg.angle_threshold)
    drift += feedback_reasons(feedback, cfg.feedback_threshold) + far_reasons(far, cfg.far_threshold)
    worse = regression_reasons(candidate, champion, cfg.tolerance, champion_label) if champion else []
    return Gate(concept_drift=bool(drift), promoted=not drift and not worse, reasons=tuple(drift + worse))


def class_distribution(y: np.ndarray, yhat: np.ndarray, n_classes: int = N_CLASSES) -> dict[str, Any]:
    """Chi-square test of the predicted class counts against the true label counts (information only).

    `chi2` is left out when it is infinite (a class predicted that has no label), `p_value` when the test is
    undefined (fewer than two classes): a DVC metrics file holds no null.
    """
    from scipy.stats import chisquare

    observed = np.bincount(np.asarray(yhat, np.int64), minlength=n_classes)[:n_classes]
    expected = np.bincount(np.asarray(y, np.int64), minlength=n_classes)[:n_classes]
    present = expected > 0
    # counts as {class: n}, not lists: DVC metrics cannot show lists
    out: dict[str, Any] = {
        "predicted": {str(c): int(n) for c, n in enumerate(observed)},
        "actual": {str(c): int(n) for c, n in enumerate(expected)},
    }
    if observed[~present].sum() > 0:  # predictions of a class absent from the labels: infinitely unlikely
        return out | {"p_value": 0.0, "dof": int(present.sum()) - 1}
    if present.sum() < 2:
        return out | {"chi2": 0.0, "dof": 0}
    res = chisquare(observed[present], expected[present])
    return out | {"chi2": float(res.statistic), "p_value": float(res.pvalue), "dof": int(present.sum()) - 1}
