"""The drift check `monitor_perf`, the sliced holdout metrics, the promotion gate and the monitor's plots."""

import json
import types

import numpy as np
import pytest

from rotmnist import io
from rotmnist.config import MonitorConfig
from rotmnist.errors import PipelineError
from rotmnist.learning import gate, metrics, plots
from rotmnist.stages import monitor
from tests.support.helpers import MONITOR_PLOTS


class LabelModel:
    """A model whose predictions are given: `.predict` returns them (checking it got the images)."""

    def __init__(self, labels):
        self.labels = np.asarray(labels)
        self.seen = None

    def predict(self, x):
        self.seen = x
        return self.labels


def dataset(y, angle=None) -> io.Dataset:
    y = np.asarray(y, np.uint8)
    n = len(y)
    return io.Dataset(
        x=np.zeros((n, 28, 28), np.uint8),
        y=y,
        source_id=np.arange(n, dtype=np.int32),
        angle=np.zeros(n, np.int8) if angle is None else np.asarray(angle, np.int8),
        mnist_split=np.zeros(n, np.int8),
    )


# ---- monitor_perf ---------------------------------------------------------------------------------


def test_monitor_perf_flags_drift_only_above_the_threshold():
    y = np.arange(10) % 10
    three_wrong = y.copy()
    three_wrong[:3] = (y[:3] + 1) % 10  # E = 0.3
    ds = dataset(y)
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
        (LabelModel([1]), dataset([1]), -0.1, ValueError, r"within \[0, 1\]"),
        (LabelModel([1]), dataset([1]), 1.5, ValueError, r"within \[0, 1\]"),
        (LabelModel([1]), dataset([1]), float("nan"), ValueError, r"within \[0, 1\]"),
        (LabelModel([1]), dataset([1]), "0.1", TypeError, "threshold must be a number"),
        (LabelModel([1]), dataset([1]), None, TypeError, "threshold must be a number"),
        (LabelModel([1]), dataset([1]), True, TypeError, "threshold must be a number"),
        (object(), dataset([1]), 0.1, TypeError, "predict"),
        (LabelModel([1]), np.zeros((1, 28, 28)), 0.1, TypeError, r"\.x and \.y"),
        (LabelModel([]), dataset([]), 0.1, ValueError, "empty"),
        (LabelModel([1]), types.SimpleNamespace(x=np.zeros((2, 28, 28)), y=np.array([1])), 0.1, ValueError, "2 images"),
        (LabelModel([1, 2]), dataset([1, 2, 3]), 0.1, ValueError, "one label per image"),
        (LabelModel(np.zeros((2, 10))), dataset([1, 2]), 0.1, ValueError, "one label per image"),
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
    overall_flagged = any("monitor.threshold" in r for r in gate.drift_reasons(sliced, threshold, 1.0))
    assert gate.monitor_perf(LabelModel(yhat), dataset(y), threshold) is overall_flagged is (threshold < 0.25)


# ---- slices and the gate ----------------------------------------------------------------------------


def test_slice_metrics_overall_per_angle_and_per_class():
    y = np.array([0, 0, 1, 1, 2, 2])
    yhat = np.array([0, 1, 1, 1, 2, 0])
    angle = np.array([0, -30, 0, -30, 0, -30])
    m = metrics.slice_metrics(y, yhat, angle)
    assert (m["n"], m["accuracy"], m["error_rate"]) == (6, pytest.approx(4 / 6), pytest.approx(2 / 6))
    assert list(m["per_angle"]) == ["-30", "0"]
    assert m["per_angle"]["0"] == {"n": 3, "accuracy": 1.0, "error_rate": 0.0}
    assert m["per_angle"]["-30"]["accuracy"] == pytest.approx(1 / 3)
    assert {c: s["accuracy"] for c, s in m["per_class"].items()} == {"0": 0.5, "1": 1.0, "2": 0.5}
    assert json.loads(json.dumps(m)) == m  # JSON-ready
    with pytest.raises(ValueError, match="equal, non-zero"):
        metrics.slice_metrics(y, yhat[:-1], angle)


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


def metrics_with(overall: float, per_angle: dict[str, float]) -> dict:
    def s(acc):
        return {"n": 100, "accuracy": acc, "error_rate": 1 - acc}

    return {**s(overall), "per_angle": {a: s(v) for a, v in per_angle.items()}, "per_class": {}}


CFG = MonitorConfig(model_name="m", threshold=0.01, angle_threshold=0.015, tolerance=0.002)


def test_gate_passes_a_good_first_candidate():
    g = gate.decide(metrics_with(0.995, {"0": 0.996, "-30": 0.99}), None, CFG)
    assert (g.drift, g.promoted, g.reasons, g.decision) == (False, True, (), "passed")


def test_gate_fails_on_overall_error_and_names_each_bad_angle():
    g = gate.decide(metrics_with(0.97, {"0": 0.999, "-30": 0.90, "30": 0.98}), None, CFG)
    assert g.drift and not g.promoted and g.decision == "failed"
    assert len(g.reasons) == 3
    assert "monitor.threshold" in g.reasons[0]
    assert "-30 deg" in g.reasons[1] and "30 deg" in g.reasons[2]
    assert all("angle_threshold" in r for r in g.reasons[1:])


def test_gate_refuses_a_candidate_worse_than_the_champion_beyond_the_tolerance():
    champion = metrics_with(0.998, {"0": 0.999, "-30": 0.997})
    within = gate.decide(metrics_with(0.997, {"0": 0.999, "-30": 0.995}), champion, CFG)
    assert within.promoted and within.reasons == ()
    worse = gate.decide(metrics_with(0.997, {"0": 0.999, "-30": 0.993}), champion, CFG, "champion v4")
    assert not worse.drift and not worse.promoted
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
        assert io.metrics_problems(dist) == []


# ---- ROC curves -------------------------------------------------------------------------------------


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


def test_one_vs_rest_roc_skips_classes_without_positives():
    y = np.array([0, 0, 1, 2])
    probs = np.eye(4)[[0, 0, 1, 1]]  # class 2 is predicted as 1; class 3 never occurs
    curves = metrics.one_vs_rest_roc(y, probs)
    assert sorted(curves) == [0, 1, 2]
    aucs = monitor.roc_auc(curves)
    # class 1: its positive ties one negative and beats two (2.5 of 3 pairs); class 2: every score tied
    assert aucs["per_class"] == {"0": 1.0, "1": pytest.approx(5 / 6, abs=1e-6), "2": 0.5}
    assert aucs["macro"] == pytest.approx((1 + 5 / 6 + 0.5) / 3, abs=1e-6)
    assert metrics.one_vs_rest_roc(np.array([1, 1]), np.eye(2)[[1, 1]]) == {} and monitor.roc_auc({}) == {}
    with pytest.raises(ValueError, match="probs must have shape"):
        metrics.one_vs_rest_roc(y, probs[:3])


def test_sampled_curve_is_exact_at_its_points_takes_vertical_steps_at_the_top_and_interpolates():
    fpr, tpr = np.array([0.0, 0.0, 0.5, 1.0]), np.array([0.0, 0.5, 1.0, 1.0])
    got = metrics.sample_curve(fpr, tpr, [0.0, 0.25, 0.5, 0.75, 1.0])
    assert got.tolist() == [0.5, 0.75, 1.0, 1.0, 1.0]
    grid = metrics.roc_grid(300)
    assert grid[0] == 0.0 and grid[-1] == 1.0 and np.all(np.diff(grid) > 0) and 250 <= len(grid) <= 300
    assert grid[1] == pytest.approx(metrics.ROC_LOG_FLOOR)


def test_roc_rows_are_a_few_hundred_points_for_every_class():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 5000)
    probs = rng.random((5000, 10)) + 3 * np.eye(10)[y] * rng.random((5000, 1))
    rows = monitor.roc_rows(metrics.one_vs_rest_roc(y, probs))
    assert list(rows[0]) == ["fpr"] + [f"class_{c}" for c in range(10)]
    assert 250 <= len(rows) <= monitor.ROC_POINTS
    assert rows[0]["fpr"] == 0.0 and rows[-1] == {"fpr": 1.0} | {f"class_{c}": 1.0 for c in range(10)}
    for c in range(10):
        column = [r[f"class_{c}"] for r in rows]
        assert column == sorted(column)  # a ROC curve never falls
    missing = monitor.roc_rows(metrics.one_vs_rest_roc(y[y < 9], probs[y < 9]))
    assert {r["class_9"] for r in missing} == {""}


# ---- plots and report helpers ---------------------------------------------------------------------


def test_angle_rows_and_confusion_matrix():
    cand = metrics_with(0.9, {"10": 0.8, "-10": 0.95, "0": 1.0})
    rows = monitor.angle_rows(cand, None)
    assert [r["angle"] for r in rows] == [-10, 0, 10]
    assert all(r["champion"] == "" for r in rows)
    rows = monitor.angle_rows(cand, metrics_with(0.9, {"0": 0.5, "10": 0.7}))
    assert [r["champion"] for r in rows] == ["", 0.5, 0.7]
    cm = metrics.confusion_matrix(np.array([0, 0, 3, 9]), np.array([0, 1, 3, 3]))
    assert cm.shape == (10, 10) and cm.sum() == 4 and cm[0, 0] == cm[0, 1] == cm[3, 3] == cm[9, 3] == 1


def bar_centres(fig) -> dict[str, list[float]]:
    ax = fig.axes[0]
    return {c.get_label(): [round(b.get_x() + b.get_width() / 2, 6) for b in c] for c in ax.containers}


def test_angle_bars_are_centred_without_a_champion_and_side_by_side_with_one():
    cand = metrics_with(0.99, {"-10": 0.99, "0": 1.0, "10": 0.98})
    alone = plots.angle_accuracy_figure(monitor.angle_rows(cand, None), 0.985, ("candidate v1", "champion vNone"))
    assert bar_centres(alone) == {"candidate v1": [0.0, 1.0, 2.0]}
    assert "champion" not in " ".join(t.get_text() for t in alone.axes[0].get_legend().get_texts())
    champion = metrics_with(0.99, {"-10": 0.97, "0": 1.0})  # no 10 deg slice
    pair = plots.angle_accuracy_figure(monitor.angle_rows(cand, champion), 0.985, ("candidate v2", "champion v1"))
    assert bar_centres(pair) == {"candidate v2": [-0.2, 0.8, 1.8], "champion v1": [0.2, 1.2]}
    ax = pair.axes[0]
    assert ax.get_ylim()[0] < 0.97 and ax.get_ylim()[1] >= 1.0  # zoomed, but every bar and the gate line fit
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["99.00%", "100.00%", "98.00%", "97.00%", "100.00%"]  # every bar carries its value
    assert "axis from" in ax.get_ylabel()  # the zoom is said, not hidden


def test_write_plots_writes_csv_for_dvc_and_png(tmp_path):
    rng = np.random.default_rng(0)
    ds = dataset(rng.integers(0, 10, 60), angle=np.tile([0, -30, 30], 20))
    probs = rng.random((60, 10)).astype(np.float32)
    yhat = probs.argmax(1)
    cand = metrics.slice_metrics(ds.y, yhat, ds.angle)
    report = {"registry": {"version": 2, "compared_with": 1}, "holdout": cand, "champion_holdout": cand}
    monitor.write_plots(tmp_path / "p", ds, probs, report, 1 - CFG.angle_threshold)
    files = sorted((tmp_path / "p").iterdir())
    names = [f.name for f in files]
    assert names == MONITOR_PLOTS
    for f in files:
        if f.suffix == ".png":
            assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (tmp_path / "p" / "confusion.csv").read_text().splitlines()
    assert lines[0] == "actual,predicted" and len(lines) == 61
    assert lines[1] == f"{ds.y[0]},{yhat[0]}"
    assert (tmp_path / "p" / "angle_accuracy.csv").read_text().splitlines()[0] == "angle,candidate,champion"
    roc = (tmp_path / "p" / "roc.csv").read_text().splitlines()
    assert roc[0] == "fpr," + ",".join(f"class_{c}" for c in range(10)) and roc[1].startswith("0.0,")
    assert not list((tmp_path / "p").glob(".*tmp*"))  # atomic writes leave no temp files


def test_read_run_reference(tmp_path):
    path = tmp_path / "run.json"
    with pytest.raises(PipelineError, match="run `rotmnist train` first"):
        monitor.read_run_reference(path)
    path.write_text("{not json")
    with pytest.raises(PipelineError, match="not valid JSON"):
        monitor.read_run_reference(path)
    path.write_text(json.dumps({"run_id": "abc"}))
    with pytest.raises(PipelineError, match="lacks model_uri"):
        monitor.read_run_reference(path)
    path.write_text(json.dumps({"run_id": "abc", "model_uri": "models:/m-1"}))
    assert monitor.read_run_reference(path)["model_uri"] == "models:/m-1"


def test_flat_metrics_and_version_tags_carry_the_decision():
    y = np.array([0, 1, 2, 3])
    report = {
        "gate": {
            "decision": "failed",
            "passed": False,
            "drift": True,
            "reasons": "a; b",
            "threshold": 0.01,
            "angle_threshold": 0.015,
            "tolerance": 0.002,
        },
        "registry": {"compared_with": 2},
        "training_run_id": "r1",
        "holdout": metrics.slice_metrics(y, np.array([0, 1, 2, 0]), np.array([0, 0, -10, -10]), np.array([0, 1, 0, 1])),
        "class_distribution": gate.class_distribution(y, y),
    }
    flat = monitor.flat_metrics(report)
    assert flat["holdout_accuracy"] == 0.75 and flat["holdout_accuracy_angle_-10"] == 0.5
    assert flat["holdout_sources_wrong_at_every_angle"] == 0
    assert flat["gate_passed"] == 0.0 and flat["gate_drift"] == 1.0 and "holdout_pred_chi2_pvalue" in flat
    tags = monitor.version_tags(report, "abc123", "md5:ff")
    assert tags["gate"] == "failed" and tags["gate_reasons"] == "a; b" and tags["compared_with"] == "v2"
    assert tags["holdout_accuracy_angle_0"] == "1.000000" and tags["training_run_id"] == "r1"
    assert tags["git_commit"] == "abc123" and tags["data_hash"] == "md5:ff"
    assert all(isinstance(v, str) for v in tags.values())
