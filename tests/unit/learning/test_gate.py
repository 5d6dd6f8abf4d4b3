"""The concept drift check (holdout check) `monitor_perf` and the promotion gate's rules."""

from __future__ import annotations

import types

import numpy as np
import pytest

from rotmnist.config import MonitorConfig
from rotmnist.learning import gate, metrics
from rotmnist.reports import metrics_problems
from tests.support.datasets import blank_dataset
from tests.support.fakes import metrics_with


class LabelModel:
    """A model whose predictions are given: `.predict` returns them (checking it got the images)."""

    def __init__(self, labels):
        self.labels = np.asarray(labels)
        self.seen = None

    def predict(self, x):
        self.seen = x
        return self.labels


CFG = MonitorConfig(model_name="m", threshold=0.01, angle_threshold=0.015, tolerance=0.002)


def test_monitor_perf_flags_drift_only_above_the_threshold():
    y = np.arange(10) % 10
    three_wrong = y.copy()
    three_wrong[:3] = (y[:3] + 1) % 10  # E = 0.3
    ds = blank_dataset(y)
    assert gate.monitor_perf(LabelModel(y), ds, 0.0) is False
    assert gate.monitor_perf(LabelModel(three_wrong), ds, 0.29) is True
    assert gate.monitor_perf(LabelModel(three_wrong), ds, 0.3) is False  # E == threshold is not drift
    assert gate.monitor_perf(LabelModel(three_wrong), ds, 1) is False


def test_monitor_perf_passes_the_images_and_accepts_any_object_with_x_and_y():
    model = LabelModel([1, 2])
    gt = types.SimpleNamespace(x=np.ones((2, 28, 28)), y=np.array([1, 3]))
    assert gate.monitor_perf(model, gt, 0.4) is True
    assert model.seen is gt.x


@pytest.mark.parametrize(
    ("model", "gt", "threshold", "error", "match"),
    [
        (LabelModel([1]), blank_dataset([1]), -0.1, ValueError, r"within \[0, 1\]"),
        (LabelModel([1]), blank_dataset([1]), 1.5, ValueError, r"within \[0, 1\]"),
        (LabelModel([1]), blank_dataset([1]), float("nan"), ValueError, r"within \[0, 1\]"),
        (LabelModel([1]), blank_dataset([1]), "0.1", TypeError, "threshold must be a number"),
        (LabelModel([1]), blank_dataset([1]), None, TypeError, "threshold must be a number"),
        (LabelModel([1]), blank_dataset([1]), True, TypeError, "threshold must be a number"),
        (object(), blank_dataset([1]), 0.1, TypeError, "predict"),
        (LabelModel([1]), np.zeros((1, 28, 28)), 0.1, TypeError, r"\.x and \.y"),
        (LabelModel([]), blank_dataset([]), 0.1, ValueError, "empty"),
        (LabelModel([1]), types.SimpleNamespace(x=np.zeros((2, 28, 28)), y=np.array([1])), 0.1, ValueError, "2 images"),
        (LabelModel([1, 2]), blank_dataset([1, 2, 3]), 0.1, ValueError, "one label per image"),
        (LabelModel(np.zeros((2, 10))), blank_dataset([1, 2]), 0.1, ValueError, "one label per image"),
    ],
)
def test_monitor_perf_rejects_bad_inputs(model, gt, threshold, error, match):
    with pytest.raises(error, match=match):
        gate.monitor_perf(model, gt, threshold)


@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.25, 0.3, 0.5, 1.0])
def test_the_stage_gate_uses_the_same_rule_as_monitor_perf(threshold):
    y = np.arange(20) % 10
    yhat = np.where(np.arange(20) < 5, (y + 1) % 10, y)  # E = 0.25
    sliced = metrics.slice_metrics(y, yhat, np.zeros(20))
    overall_flagged = any("monitor.threshold" in r for r in gate.concept_drift_reasons(sliced, threshold, 1.0))
    assert gate.monitor_perf(LabelModel(yhat), blank_dataset(y), threshold) is overall_flagged is (threshold < 0.25)


def test_gate_passes_a_good_first_candidate():
    g = gate.decide(metrics_with(0.995, {"0": 0.996, "-30": 0.99}), None, CFG)
    assert (g.concept_drift, g.promoted, g.reasons, g.decision) == (False, True, (), "passed")


def test_gate_fails_on_overall_error_and_names_each_bad_angle():
    g = gate.decide(metrics_with(0.97, {"0": 0.999, "-30": 0.90, "30": 0.98}), None, CFG)
    assert g.concept_drift and not g.promoted and g.decision == "failed"
    assert len(g.reasons) == 3
    assert "monitor.threshold" in g.reasons[0]
    assert "-30 deg" in g.reasons[1] and "30 deg" in g.reasons[2]
    assert all("angle_threshold" in r for r in g.reasons[1:])


def test_gate_refuses_a_candidate_worse_than_the_champion_beyond_the_tolerance():
    champion = metrics_with(0.998, {"0": 0.999, "-30": 0.997})
    within = gate.decide(metrics_with(0.997, {"0": 0.999, "-30": 0.995}), champion, CFG)
    assert within.promoted and within.reasons == ()
    worse = gate.decide(metrics_with(0.997, {"0": 0.999, "-30": 0.993}), champion, CFG, "champion v4")
    assert not worse.concept_drift and not worse.promoted
    assert worse.reasons == (
        "accuracy at -30 deg 99.30% is 0.40% below champion v4 (99.70%), beyond monitor.tolerance 0.20%",
    )


def test_class_distribution_chi_square():
    y = np.repeat(np.arange(10), 50)
    same = gate.class_distribution(y, y)
    assert same["chi2"] == 0.0 and same["p_value"] == pytest.approx(1.0) and same["dof"] == 9
    skewed = gate.class_distribution(y, np.where(y < 5, 0, y))
    assert skewed["p_value"] < 1e-6
    assert skewed["predicted"]["0"] == 250 and skewed["actual"] == {str(c): 50 for c in range(10)}
    absent = gate.class_distribution(np.array([1, 1, 2, 2]), np.array([1, 1, 2, 7]))
    assert absent["p_value"] == 0.0 and "chi2" not in absent  # infinite: left out, never null
    single = gate.class_distribution(np.array([3, 3]), np.array([3, 3]))
    assert single["chi2"] == 0.0 and single["dof"] == 0 and "p_value" not in single
    for dist in (same, skewed, absent, single):
        assert metrics_problems(dist) == []


# ---- the drift rule at its edges ------------------------------------------------------------------


def test_an_error_equal_to_the_threshold_is_never_drift_even_at_the_ends_of_the_range():
    y = np.array([1, 2, 3, 4])
    all_wrong = LabelModel((y + 1) % 10)
    assert gate.monitor_perf(LabelModel(y), blank_dataset(y), 0) is False  # E = 0, threshold 0 (an int)
    assert gate.monitor_perf(all_wrong, blank_dataset(y), 1.0) is False  # E = 1, threshold 1
    assert gate.monitor_perf(all_wrong, blank_dataset(y), np.float64(0.99)) is True  # numpy numbers are numbers
    one_wrong = LabelModel([1, 2, 3, 0])  # E = 0.25
    assert [gate.monitor_perf(one_wrong, blank_dataset(y), t) for t in (0.24, 0.25, 0.26)] == [True, False, False]


def test_monitor_perf_refuses_labels_that_are_not_one_dimensional():
    gt = types.SimpleNamespace(x=np.zeros((2, 28, 28)), y=np.array([[1], [2]]))
    with pytest.raises(ValueError, match="one-dimensional"):
        gate.monitor_perf(LabelModel([[1], [2]]), gt, 0.1)


def test_concept_drift_reasons_name_the_overall_error_then_each_angle_above_its_threshold():
    holdout = metrics_with(0.75, {"-30": 0.5, "0": 1.0, "30": 0.75})
    assert gate.concept_drift_reasons(holdout, 0.25, 0.5) == []  # every error at most its threshold
    assert gate.concept_drift_reasons(holdout, 0.125, 0.5) == ["holdout error 25.00% > monitor.threshold 12.50%"]
    assert gate.concept_drift_reasons(holdout, 0.25, 0.125) == [
        "error at -30 deg 50.00% > monitor.angle_threshold 12.50%",
        "error at 30 deg 25.00% > monitor.angle_threshold 12.50%",
    ]
    assert len(gate.concept_drift_reasons(holdout, 0.0, 0.0)) == 3  # overall, -30 and 30; 0 deg is perfect


def test_regression_reasons_name_each_slice_that_fell_beyond_the_tolerance():
    champion = metrics_with(0.875, {"-30": 0.75, "0": 1.0})
    assert gate.regression_reasons(champion, champion, 0.0) == []
    better = metrics_with(1.0, {"-30": 1.0, "0": 1.0, "30": 0.5})  # 30 deg: no champion slice to compare with
    assert gate.regression_reasons(better, champion, 0.0) == []
    # a drop exactly equal to the tolerance is allowed; one above it is named, overall first
    at_tolerance = metrics_with(0.75, {"-30": 0.625, "0": 1.0})
    assert gate.regression_reasons(at_tolerance, champion, 0.125) == []
    assert gate.regression_reasons(at_tolerance, champion, 0.0625, "champion v3") == [
        "accuracy overall 75.00% is 12.50% below champion v3 (87.50%), beyond monitor.tolerance 6.25%",
        "accuracy at -30 deg 62.50% is 12.50% below champion v3 (75.00%), beyond monitor.tolerance 6.25%",
    ]
    assert "below the champion (" in gate.regression_reasons(at_tolerance, champion, 0.0)[0]  # default label


def test_without_a_champion_only_drift_counts_and_with_both_failures_drift_comes_first():
    worse_than_champion = metrics_with(0.997, {"0": 0.999, "-30": 0.993})
    alone = gate.decide(worse_than_champion, None, CFG)
    assert (alone.concept_drift, alone.promoted, alone.decision) == (False, True, "passed")
    champion = metrics_with(0.998, {"0": 0.999, "-30": 0.997})
    drifted = metrics_with(0.5, {"0": 0.5})
    both = gate.decide(drifted, champion, CFG, "champion v1")
    assert both.concept_drift and not both.promoted and both.decision == "failed"
    assert both.reasons == (
        tuple(gate.concept_drift_reasons(drifted, CFG.threshold, CFG.angle_threshold))
        + tuple(gate.regression_reasons(drifted, champion, CFG.tolerance, "champion v1"))
    )
    assert "monitor.threshold" in both.reasons[0] and "champion v1" in both.reasons[-1]


def test_class_distribution_counts_only_the_classes_asked_for():
    y = np.array([0, 1, 1, 2, 2, 2])
    three = gate.class_distribution(y, y, n_classes=3)
    assert three["actual"] == {"0": 1, "1": 2, "2": 3} and three["predicted"] == three["actual"]
    assert three["dof"] == 2 and three["chi2"] == 0.0


def test_the_feedback_slice_gates_only_when_monitor_feedback_threshold_is_set():
    good = metrics_with(0.995, {"0": 0.996, "-30": 0.99})
    slice_ = {"n": 50, "accuracy": 0.9, "error_rate": 0.1}
    assert gate.decide(good, None, CFG, feedback=slice_).promoted  # off by default
    strict = CFG.model_copy(update={"feedback_threshold": 0.05})
    g = gate.decide(good, None, strict, feedback=slice_)
    assert g.concept_drift and not g.promoted
    assert g.reasons == ("error on the feedback slice 10.00% > monitor.feedback_threshold 5.00%",)
    assert gate.decide(good, None, strict, feedback=None).promoted  # no corrections: nothing to gate on


def test_the_holdout_beyond_the_trained_angles_gates_only_when_monitor_far_threshold_is_set():
    good = metrics_with(0.995, {"0": 0.996, "-30": 0.99})
    far = {"-60": 0.95, "60": 0.80, "90": 0.5}
    assert gate.decide(good, None, CFG, far=far).promoted  # off by default: reported, not gated
    strict = CFG.model_copy(update={"far_threshold": 0.1})
    g = gate.decide(good, None, strict, far=far)
    assert g.concept_drift and not g.promoted
    assert g.reasons == (
        "holdout error at 60 deg (beyond the trained angles) 20.00% > monitor.far_threshold 10.00%",
        "holdout error at 90 deg (beyond the trained angles) 50.00% > monitor.far_threshold 10.00%",
    )
    assert gate.decide(good, None, strict, far={"-60": 0.95}).promoted
    assert gate.decide(good, None, strict, far=None).promoted  # a circle within the trained angles


@pytest.mark.parametrize("circle", [[], [0, 0], [30, 0], [-200, 0], [0, 181]])
def test_monitor_circle_must_be_distinct_increasing_angles_within_half_a_turn(circle):
    with pytest.raises(ValueError, match="circle"):
        MonitorConfig(circle=circle)
