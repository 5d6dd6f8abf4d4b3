"""Each stage's headline figures (metrics/<stage>.json): a flat row of a few values taken from its report."""

from __future__ import annotations

import json
import time

import pytest

from rotmnist.reports import write_report
from rotmnist.stages import compare, curriculum, monitor, train, tune
from tests.support.fakes import metrics_with


def written(tmp_path, report: dict, headline) -> tuple[dict, dict]:
    """(report, headline) as the stage writes them, with a wall time of about 2 s."""
    write_report(tmp_path / "report.json", tmp_path / "headline.json", report, headline, time.perf_counter() - 2)
    return json.loads((tmp_path / "report.json").read_text()), json.loads((tmp_path / "headline.json").read_text())


def test_tune_shows_the_best_accuracy_and_the_trials_completed(tmp_path):
    report = {"best_val_accuracy": 0.97, "best_trial": 3, "trials": {"complete": 5, "pruned": 2, "failed": 1}}
    report |= {"study": "rotmnist-abc"}
    full, headline = written(tmp_path, report, tune.headline)
    assert full == report | {"seconds": headline["seconds"]}
    assert headline == {"best_val_accuracy": 0.97, "trials_complete": 5, "seconds": headline["seconds"]}
    assert headline["seconds"] == pytest.approx(2.0, abs=0.5)


def test_train_shows_upright_and_the_worst_angle_the_smallest_on_a_tie(tmp_path):
    test = metrics_with(0.95, {"-30": 0.9, "0": 0.99, "30": 0.9})
    report = {"val_accuracy": 0.96, "test": test, "epochs": 2, "images_trained": 600, "images_per_second": 300.5}
    _, headline = written(tmp_path, report, train.headline)
    assert headline == {
        "val_accuracy": 0.96,
        "test_accuracy": 0.95,
        "test_upright_accuracy": 0.99,
        "test_worst_angle": -30,
        "test_worst_angle_accuracy": 0.9,
        "images_per_second": 300.5,
        "seconds": headline["seconds"],
    }
    # No val split, no upright test image: those keys are absent, never null.
    report = {"test": metrics_with(0.9, {"10": 0.8, "20": 1.0}), "images_per_second": 1.0}
    _, headline = written(tmp_path, report, train.headline)
    assert set(headline) == {
        "test_accuracy",
        "test_worst_angle",
        "test_worst_angle_accuracy",
        "images_per_second",
        "seconds",
    }
    assert (headline["test_worst_angle"], headline["test_worst_angle_accuracy"]) == (10, 0.8)


def test_train_throughput_is_the_images_trained_over_the_seconds_of_the_epochs():
    history = [{"epoch_images": 100, "epoch_seconds": 1.0}, {"epoch_images": 100, "epoch_seconds": 3.0}]
    summary = train.summary(metrics_with(0.9, {"0": 0.9}), {}, history, 2, 100)
    assert (summary["images_trained"], summary["images_per_second"]) == (200, 50.0)  # not the mean rate, 66.7


def monitor_report(passed: bool, registry: dict, feedback: dict | None = None) -> dict:
    report = {
        "gate": {"decision": "passed" if passed else "failed", "passed": passed, "drift": not passed},
        "registry": {"model_name": "m", **registry},
        "training_run_id": "r",
        "holdout": metrics_with(0.98, {"-10": 0.97, "0": 0.99, "10": 0.975}),
    }
    return report | ({"feedback": feedback} if feedback else {})


def test_monitor_shows_the_gate_and_the_versions_and_no_champion_when_there_is_none(tmp_path):
    _, headline = written(tmp_path, monitor_report(False, {"version": 1}), monitor.headline)
    assert headline == {
        "holdout_accuracy": 0.98,
        "holdout_worst_angle": -10,
        "holdout_worst_angle_accuracy": 0.97,
        "gate_passed": False,
        "version": 1,
        "seconds": headline["seconds"],
    }
    promoted = monitor_report(True, {"version": 3, "champion_before": 2, "compared_with": 2, "champion_after": 3})
    _, headline = written(tmp_path, promoted, monitor.headline)
    assert (headline["gate_passed"], headline["version"], headline["champion_version"]) == (True, 3, 3)
    assert "feedback_accuracy" not in headline
    refused = monitor_report(False, {"version": 4, "champion_before": 3, "compared_with": 3, "champion_after": 3})
    refused = written(
        tmp_path, refused | {"feedback": {"n": 8, "accuracy": 0.75, "error_rate": 0.25}}, monitor.headline
    )
    assert (refused[1]["version"], refused[1]["champion_version"], refused[1]["feedback_accuracy"]) == (4, 3, 0.75)


def compare_row(worst: float, p99: float, sla_met: bool) -> dict:
    return {"worst_angle": 30, "worst_angle_accuracy": worst, "latency_ms_p99": p99, "sla_met": sla_met}


def test_compare_shows_the_pipeline_row_and_how_many_configurations_meet_the_sla(tmp_path):
    rows = {"logreg-upright": compare_row(0.5, 0.1, False), "cnn-rotated": compare_row(0.99, 2.0, True)}
    report = {"configurations": rows | {"pipeline": compare_row(0.995, 3.5, True)}, "sla": {}, "latency": {}}
    _, headline = written(tmp_path, report, compare.headline)
    assert headline == {
        "pipeline_worst_angle_accuracy": 0.995,
        "pipeline_latency_ms_p99": 3.5,
        "configurations_meeting_sla": 2,
        "seconds": headline["seconds"],
    }
    _, headline = written(tmp_path, {"configurations": rows, "sla": {}, "latency": {}}, compare.headline)
    assert headline == {"configurations_meeting_sla": 1, "seconds": headline["seconds"]}  # the pipeline not run


def test_curriculum_shows_the_rounds_the_verdict_and_the_final_floor(tmp_path):
    final = {"train_images": 600, "min_accuracy": 0.95, "accuracy": {"angle_0": 0.97, "angle_30": 0.95}}
    report = {"all_satisfied": False, "rounds": 6, "retrainings": 4, "final": final, "continual": {"acc": 0.9}}
    _, headline = written(tmp_path, report, curriculum.headline)
    assert headline == {
        "rounds": 6,
        "retrainings": 4,
        "all_satisfied": False,
        "final_min_accuracy": 0.95,
        "seconds": headline["seconds"],
    }


def test_a_headline_that_is_not_a_flat_row_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"trials: holds more than one value"):
        written(tmp_path, {"trials": {"complete": 1}}, lambda r: {"trials": r["trials"]})
    with pytest.raises(ValueError, match=r"sizes: \[1, 2\]"):
        written(tmp_path, {"sizes": [1, 2]}, lambda r: {"sizes": r["sizes"]})
    assert list(tmp_path.iterdir()) == []
