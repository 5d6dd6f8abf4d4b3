"""The comparison's pure parts: training pools, the SLA verdict, the Pareto front, model size and loading."""

from __future__ import annotations

import numpy as np
import pytest

from rotmnist.config import SlaConfig
from rotmnist.data.dataset import Dataset
from rotmnist.errors import PipelineError
from rotmnist.learning import compare
from rotmnist.learning.model import classifier_from_spec


def _dataset(angles: list[int]) -> Dataset:
    n = len(angles)
    return Dataset(
        x=np.zeros((n, 28, 28), np.uint8),
        y=np.arange(n, dtype=np.uint8) % 10,
        source_id=np.arange(n, dtype=np.int32),
        angle=np.array(angles, np.int8),
        mnist_split=np.zeros(n, np.int8),
    )


def test_the_upright_pool_holds_only_angle_zero_and_the_rotated_pool_everything():
    train = _dataset([0, 10, -30, 0, 30])
    assert compare.training_pool(train, "upright").angle.tolist() == [0, 0]
    assert len(compare.training_pool(train, "rotated")) == 5
    with pytest.raises(PipelineError, match="no upright images"):
        compare.training_pool(_dataset([10, 20]), "upright")


SLA = SlaConfig(min_worst_angle_accuracy=0.99, max_p99_latency_ms=5.0)


def _row(accuracy: float, p99: float) -> dict:
    return {"worst_angle_accuracy": accuracy, "worst_angle": 30, "latency_ms_p99": p99}


def test_the_sla_is_met_within_both_thresholds_including_the_boundaries():
    assert compare.sla_verdict(_row(0.995, 1.0), SLA) == {"sla_met": True, "sla_reasons": "none"}
    assert compare.sla_verdict(_row(0.99, 5.0), SLA)["sla_met"]


def test_the_sla_verdict_says_which_threshold_failed():
    low = compare.sla_verdict(_row(0.9812, 1.0), SLA)
    assert not low["sla_met"]
    assert low["sla_reasons"] == "worst-angle accuracy 98.12% at +30° < 99.00%"
    slow = compare.sla_verdict(_row(0.999, 7.5), SLA)
    assert slow["sla_reasons"] == "single-image p99 7.50 ms > 5 ms"
    both = compare.sla_verdict(_row(0.5, 50.0), SLA)
    assert not both["sla_met"] and both["sla_reasons"].count(";") == 1


def test_the_pareto_front_keeps_exactly_the_undominated_points():
    points = {
        "fast": (0.90, 0.1),
        "accurate": (0.99, 2.0),
        "middle": (0.95, 0.5),
        "dominated": (0.94, 0.6),  # middle is more accurate and faster
        "slower_twin": (0.99, 3.0),  # as accurate as `accurate`, slower
        "tie": (0.90, 0.1),  # equal to `fast`: neither beats the other
    }
    assert compare.pareto_front(points) == {"fast", "accurate", "middle", "tie"}
    rows = compare.mark_pareto({n: {"worst_angle_accuracy": a, "latency_ms_p99": t} for n, (a, t) in points.items()})
    assert [n for n, r in rows.items() if r["pareto"]] == ["fast", "accurate", "middle", "tie"]


def test_model_size_counts_parameters_and_the_saved_bytes():
    size = compare.model_size(classifier_from_spec({"family": "logreg"}))
    assert size["parameters"] == 28 * 28 * 10 + 10
    assert size["model_bytes"] > 4 * size["parameters"]
