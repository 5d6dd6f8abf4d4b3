"""The train stage's report: metrics without a value are left out, never null."""

from __future__ import annotations

import numpy as np

from rotmnist.data.dataset import Dataset


def test_train_metrics_leave_out_what_has_no_value(monkeypatch):
    """No rotated test image and no val split: the keys are absent, never null (DVC cannot show a null)."""
    from rotmnist.reports import metrics_problems
    from rotmnist.stages import train

    upright = Dataset(
        x=np.zeros((4, 28, 28), np.uint8),
        y=np.array([0, 1, 2, 3], np.uint8),
        source_id=np.arange(4, dtype=np.int32),
        angle=np.zeros(4, np.int8),
        mnist_split=np.ones(4, np.int8),
    )
    monkeypatch.setattr(train, "predict_labels", lambda model, x: np.array([0, 1, 2, 0]))
    report = train.test_report(None, upright)
    assert report["accuracy"] == 0.75 and "worst_rotated_accuracy" not in report
    summary = train.summary(report, {}, [{"epoch_seconds": 0.04, "epoch_images": 4}], 1, 4)
    assert summary["images_trained"] == 4 and summary["images_per_second"] == 100.0
    assert "val_accuracy" not in summary and "worst_rotated_accuracy" not in summary["test"]
    assert metrics_problems(summary) == []
    assert "test_worst_rotated_accuracy" not in train.run_metrics(report, {}, {"latency_ms_p50": 1.0})
    rotated = upright.take(np.arange(4))
    rotated = Dataset(**{**rotated.__dict__, "angle": np.array([0, 0, 10, 10], np.int8)})
    assert train.test_report(None, rotated)["worst_rotated_accuracy"] == 0.5
    # Source 3's two rotations are both misread: a floor no rotation robustness lifts.
    rotated = Dataset(**{**rotated.__dict__, "source_id": np.array([0, 1, 3, 3], np.int32)})
    monkeypatch.setattr(train, "predict_labels", lambda model, x: np.array([0, 1, 0, 0]))
    report = train.test_report(None, rotated)
    assert report["every_angle_errors"] == {"sources": 3, "sources_wrong_at_every_angle": 1, "share_of_errors": 1.0}
    assert train.run_metrics(report, {}, {})["test_sources_wrong_at_every_angle"] == 1
