"""Sliced classification metrics, the confusion matrix and ROC curves, on cases small enough to count by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rotmnist.learning import metrics

# ---- error rate and slices ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("y", "yhat", "expected"),
    [
        ([1, 2, 3, 4], [1, 2, 3, 4], 0.0),
        ([1, 2, 3, 4], [1, 0, 3, 0], 0.5),
        ([7], [8], 1.0),
        ([0, 0, 0], [0, 0, 9], 1 / 3),
    ],
)
def test_error_rate_is_the_share_of_misread_labels(y, yhat, expected):
    assert metrics.error_rate(np.array(y), np.array(yhat)) == pytest.approx(expected)
    assert metrics.error_rate(y, yhat) == pytest.approx(expected)  # lists as well as arrays
    assert isinstance(metrics.error_rate(y, yhat), float)


def test_slice_metrics_overall_per_angle_and_per_class():
    y = np.array([0, 0, 1, 1, 2, 2])
    yhat = np.array([0, 1, 1, 1, 2, 0])
    angle = np.array([0, -30, 0, -30, 0, -30])
    m = metrics.slice_metrics(y, yhat, angle)
    assert (m["n"], m["accuracy"], m["error_rate"]) == (6, pytest.approx(4 / 6), pytest.approx(2 / 6))
    assert list(m["per_angle"]) == ["-30", "0"]
    assert m["per_angle"]["0"] == {"n": 3, "accuracy": 1.0, "error_rate": 0.0}
    assert m["per_angle"]["-30"] == {"n": 3, "accuracy": pytest.approx(1 / 3), "error_rate": pytest.approx(2 / 3)}
    assert {c: (s["n"], s["accuracy"]) for c, s in m["per_class"].items()} == {
        "0": (2, 0.5),
        "1": (2, 1.0),
        "2": (2, 0.5),
    }
    assert json.loads(json.dumps(m)) == m  # JSON-ready
    with pytest.raises(ValueError, match="equal, non-zero"):
        metrics.slice_metrics(y, yhat[:-1], angle)
    with pytest.raises(ValueError, match="equal, non-zero"):
        metrics.slice_metrics([], [], [])


def test_slices_add_up_to_the_whole():
    rng = np.random.default_rng(3)
    y, yhat = rng.integers(0, 10, 500), rng.integers(0, 10, 500)
    angle = rng.choice([-30, -10, 0, 10, 30], 500)
    m = metrics.slice_metrics(y, yhat, angle)
    for slices in (m["per_angle"], m["per_class"]):
        assert sum(s["n"] for s in slices.values()) == m["n"] == 500
        correct = sum(s["n"] * s["accuracy"] for s in slices.values())
        assert correct == pytest.approx(500 * m["accuracy"])
        assert all(s["accuracy"] + s["error_rate"] == pytest.approx(1.0) for s in slices.values())
    assert sorted(int(a) for a in m["per_angle"]) == [-30, -10, 0, 10, 30]


def test_every_angle_errors_counts_the_digits_misread_at_all_their_rotations():
    # source 7: wrong at both angles (one floor error each angle); source 8: wrong once; source 9: right;
    # source 5: one row only, wrong (never counts: a single view says nothing about rotations).
    source = np.array([7, 7, 8, 8, 9, 9, 5])
    y = np.array([3, 3, 1, 1, 4, 4, 2])
    yhat = np.array([5, 5, 1, 7, 4, 4, 0])
    angle = np.array([0, 30, 0, 30, 0, 30, 0])
    every = metrics.every_angle_errors(y, yhat, source)
    assert every == {"sources": 4, "sources_wrong_at_every_angle": 1, "share_of_errors": pytest.approx(2 / 4)}
    assert metrics.slice_metrics(y, yhat, angle, source)["every_angle_errors"] == every
    assert "every_angle_errors" not in metrics.slice_metrics(y, yhat, angle)
    assert metrics.every_angle_errors(y, y, source)["share_of_errors"] == 0.0  # no error: no division by zero
    with pytest.raises(ValueError, match="equal lengths"):
        metrics.every_angle_errors(y, yhat, source[:-1])


def test_every_angle_errors_does_not_depend_on_row_order():
    source = np.array([1, 2, 1, 2, 3, 3])
    y = np.array([4, 5, 4, 5, 6, 6])
    yhat = np.array([0, 5, 0, 0, 0, 0])  # sources 1 and 3 always wrong, source 2 once
    order = np.array([5, 2, 0, 4, 1, 3])
    got = metrics.every_angle_errors(y, yhat, source)
    assert got == {"sources": 3, "sources_wrong_at_every_angle": 2, "share_of_errors": pytest.approx(4 / 5)}
    assert metrics.every_angle_errors(y[order], yhat[order], source[order]) == got


# ---- confusion matrix -----------------------------------------------------------------------------


def test_confusion_matrix_counts_true_class_by_predicted_class():
    cm = metrics.confusion_matrix(np.array([0, 0, 3, 9, 9]), np.array([0, 1, 3, 3, 3]))
    assert cm.shape == (10, 10) and cm.sum() == 5
    expected = np.zeros((10, 10), int)
    expected[0, 0] = expected[0, 1] = expected[3, 3] = 1
    expected[9, 3] = 2
    np.testing.assert_array_equal(cm, expected)
    # rows sum to the true class counts, columns to the predicted ones
    np.testing.assert_array_equal(cm.sum(1), np.bincount([0, 0, 3, 9, 9], minlength=10))
    np.testing.assert_array_equal(cm.sum(0), np.bincount([0, 1, 3, 3, 3], minlength=10))
    np.testing.assert_array_equal(metrics.confusion_matrix([0, 1, 2], [2, 1, 0], n_classes=3), np.eye(3)[::-1])


# ---- ROC curves -----------------------------------------------------------------------------------


def test_roc_curve_and_auc_of_a_hand_computed_case():
    # positives score 0.35 and 0.8, negatives 0.1 and 0.4: 3 of the 4 (positive, negative) pairs are ordered
    fpr, tpr = metrics.roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert metrics.auc(fpr, tpr) == 0.75


def test_roc_ties_form_one_diagonal_step_and_count_half():
    # scores 0.9 (pos), 0.5 (pos), 0.5 (neg), 0.1 (neg): pairs (0.9 > both) 2, (0.5 vs 0.5) 1/2, (0.5 > 0.1) 1
    fpr, tpr = metrics.roc_curve([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0])
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0] and tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert metrics.auc(fpr, tpr) == pytest.approx(3.5 / 4)
    assert metrics.auc(*metrics.roc_curve([0.3] * 6, [1, 0, 1, 0, 0, 1])) == pytest.approx(0.5)  # all tied


def test_roc_perfect_reversed_and_degenerate():
    assert metrics.auc(*metrics.roc_curve([0.9, 0.8, 0.2], [1, 1, 0])) == 1.0
    assert metrics.auc(*metrics.roc_curve([0.1, 0.2, 0.9], [1, 1, 0])) == 0.0
    with pytest.raises(ValueError, match="needs positives and negatives"):
        metrics.roc_curve([0.5, 0.6], [1, 1])
    with pytest.raises(ValueError, match="scores has 2 entries"):
        metrics.roc_curve([0.5, 0.6], [1, 0, 1])


def test_auc_equals_the_share_of_correctly_ordered_pairs():
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 20, 200) / 20  # many ties
    positive = rng.random(200) < 0.3
    pos, neg = scores[positive], scores[~positive]
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    fpr, tpr = metrics.roc_curve(scores, positive)
    assert metrics.auc(fpr, tpr) == pytest.approx(pairs)
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_one_vs_rest_roc_skips_classes_without_positives():
    y = np.array([0, 0, 1, 2])
    probs = np.eye(4)[[0, 0, 1, 1]]  # class 2 is predicted as 1; class 3 never occurs
    curves = metrics.one_vs_rest_roc(y, probs)
    assert sorted(curves) == [0, 1, 2]
    assert metrics.auc(*curves[0]) == 1.0
    assert metrics.auc(*curves[1]) == pytest.approx(5 / 6)  # its positive ties one negative and beats two
    assert metrics.auc(*curves[2]) == pytest.approx(0.5)  # every score tied
    assert metrics.one_vs_rest_roc(np.array([1, 1]), np.eye(2)[[1, 1]]) == {}  # one class: no negatives
    with pytest.raises(ValueError, match="probs must have shape"):
        metrics.one_vs_rest_roc(y, probs[:3])


def test_sampled_curve_is_exact_at_its_points_takes_vertical_steps_at_the_top_and_interpolates():
    fpr, tpr = np.array([0.0, 0.0, 0.5, 1.0]), np.array([0.0, 0.5, 1.0, 1.0])
    got = metrics.sample_curve(fpr, tpr, [0.0, 0.25, 0.5, 0.75, 1.0])
    assert got.tolist() == [0.5, 0.75, 1.0, 1.0, 1.0]
    diagonal = metrics.sample_curve(np.array([0.0, 1.0]), np.array([0.0, 1.0]), np.linspace(0, 1, 11))
    np.testing.assert_allclose(diagonal, np.linspace(0, 1, 11))


def test_roc_grid_starts_at_zero_then_rises_log_spaced_from_the_floor_to_one():
    grid = metrics.roc_grid(300)
    assert grid[0] == 0.0 and grid[-1] == 1.0 and np.all(np.diff(grid) > 0) and 250 <= len(grid) <= 300
    assert grid[1] == pytest.approx(metrics.ROC_LOG_FLOOR)
    assert (grid < 0.01).sum() >= 300 // 4  # half the points are log-spaced: many near 0
    coarse = metrics.roc_grid(4, smallest=0.01)
    assert coarse[0] == 0.0 and coarse[1] == pytest.approx(0.01) and coarse[-1] == 1.0
    with pytest.raises(ValueError, match="at least 4 points"):
        metrics.roc_grid(3)
