"""Stand-ins for what the code under test is handed: a model with fixed outputs, an evaluation's metrics."""

from __future__ import annotations

import numpy as np


class ProbModel:
    """Returns one-hot probabilities of `label`, recording the batch sizes it saw."""

    def __init__(self, label: int = 3, width: int = 10):
        self.label, self.width, self.batches = label, width, []

    def predict(self, x):
        self.batches.append(len(x))
        out = np.zeros((len(x), self.width), np.float32)
        out[:, self.label] = 1.0
        return out


def metrics_with(overall: float, per_angle: dict[str, float]) -> dict:
    """An evaluation's metrics with the given overall and per-angle accuracies (100 images each, no classes)."""

    def s(acc):
        return {"n": 100, "accuracy": acc, "error_rate": 1 - acc}

    return {**s(overall), "per_angle": {a: s(v) for a, v in per_angle.items()}, "per_class": {}}
