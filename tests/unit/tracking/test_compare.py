"""The comparison's MLflow logging: what of a row becomes metrics."""

from __future__ import annotations

from rotmnist.tracking.compare import row_metrics


def test_a_row_becomes_mlflow_metrics_with_the_text_left_to_tags():
    row = {"model": "logreg", "accuracy": 0.9, "worst_angle": -30, "sla_met": False, "sla_reasons": "x"}
    row |= {"angle_accuracy": {"-30": 0.8, "0": 0.95}, "trained_by": "compare", "training_data": "upright"}
    assert row_metrics(row) == {
        "accuracy_angle_-30": 0.8,
        "accuracy_angle_0": 0.95,
        "accuracy": 0.9,
        "worst_angle": -30.0,
        "sla_met": 0.0,
    }
