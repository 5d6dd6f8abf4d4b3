"""The monitor stage's report: ROC rows, plots, flat metrics and version tags, the run reference."""

from __future__ import annotations

import numpy as np
import pytest

from rotmnist.config import MonitorConfig
from rotmnist.errors import PipelineError
from rotmnist.learning import gate, metrics
from rotmnist.reports import metrics_problems
from rotmnist.stages import monitor
from tests.support.datasets import blank_dataset
from tests.support.fakes import metrics_with
from tests.support.helpers import MONITOR_PLOTS

CFG = MonitorConfig(model_name="m", threshold=0.01, angle_threshold=0.015, tolerance=0.002)


def test_angle_rows_sort_by_angle_and_leave_the_champion_blank_where_it_has_no_slice():
    cand = metrics_with(0.9, {"10": 0.8, "-10": 0.95, "0": 1.0})
    rows = monitor.angle_rows(cand, None)
    assert rows == [
        {"angle": -10, "candidate": 0.95, "champion": ""},
        {"angle": 0, "candidate": 1.0, "champion": ""},
        {"angle": 10, "candidate": 0.8, "champion": ""},
    ]
    rows = monitor.angle_rows(cand, metrics_with(0.9, {"0": 0.5, "10": 0.7}))
    assert [r["champion"] for r in rows] == ["", 0.5, 0.7]


def test_roc_auc_per_class_and_their_mean():
    y = np.array([0, 0, 1, 2])
    probs = np.eye(4)[[0, 0, 1, 1]]  # class 2 is predicted as 1; class 3 never occurs
    aucs = monitor.roc_auc(metrics.one_vs_rest_roc(y, probs))
    # class 1: its positive ties one negative and beats two (2.5 of 3 pairs); class 2: every score tied
    assert aucs["per_class"] == {"0": 1.0, "1": pytest.approx(5 / 6, abs=1e-6), "2": 0.5}
    assert aucs["macro"] == pytest.approx((1 + 5 / 6 + 0.5) / 3, abs=1e-6)
    assert monitor.roc_auc({}) == {}  # no curve, no figure: never a null
    assert metrics_problems(aucs) == []


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


def test_write_plots_writes_csv_for_dvc_and_png(tmp_path):
    rng = np.random.default_rng(0)
    ds = blank_dataset(rng.integers(0, 10, 60), angle=np.tile([0, -30, 30], 20))
    probs = rng.random((60, 10)).astype(np.float32)
    yhat = probs.argmax(1)
    cand = metrics.slice_metrics(ds.y, yhat, ds.angle)
    report = {"registry": {"version": 2, "compared_with": 1}, "holdout": cand, "champion_holdout": cand}
    report["circle"] = {"test": {"-45": 0.9, "0": 0.99}, "holdout": {"-45": 0.8, "0": 0.98}}
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
    circle = (tmp_path / "p" / "circle.csv").read_text().splitlines()
    assert circle == ["angle,test_accuracy,holdout_accuracy", "-45,0.9,0.8", "0,0.99,0.98"]
    roc = (tmp_path / "p" / "roc.csv").read_text().splitlines()
    assert roc[0] == "fpr," + ",".join(f"class_{c}" for c in range(10)) and roc[1].startswith("0.0,")
    assert not list((tmp_path / "p").glob(".*tmp*"))  # atomic writes leave no temp files


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
    assert flat["gate_passed"] == 0.0 and flat["gate_concept_drift"] == 1.0 and "holdout_pred_chi2_pvalue" in flat
    tags = monitor.version_tags(report, "abc123", "md5:ff")
    assert tags["gate"] == "failed" and tags["gate_reasons"] == "a; b" and tags["compared_with"] == "v2"
    assert tags["concept_drift"] == "true" and "drift" not in tags
    assert tags["holdout_accuracy_angle_0"] == "1.000000" and tags["training_run_id"] == "r1"
    assert tags["git_commit"] == "abc123" and tags["data_hash"] == "md5:ff"
    assert all(isinstance(v, str) for v in tags.values())


class _Fixed:
    """A model whose predictions are given."""

    def __init__(self, yhat):
        self.yhat = np.asarray(yhat)

    def predict_proba(self, x, progress=None):
        return np.eye(10)[self.yhat]


def test_the_feedback_slice_is_reported_beside_the_holdout_with_the_champion_and_tagged():
    from tests.support.datasets import blank_dataset

    held_out = blank_dataset([1, 2, 3, 4])
    assert monitor.feedback_slice(held_out.take(np.zeros(4, bool)), _Fixed([]), None) is None
    fb = monitor.feedback_slice(held_out, _Fixed([1, 2, 3, 0]), _Fixed([0, 0, 3, 0]))
    assert fb == {"n": 4, "accuracy": 0.75, "error_rate": 0.25, "champion_accuracy": 0.25}
    y = np.array([0, 1])
    report = {
        "gate": {"decision": "passed", "passed": True, "drift": False, "reasons": "none", "threshold": 0.01},
        "registry": {},
        "training_run_id": "r1",
        "holdout": metrics.slice_metrics(y, y, np.zeros(2), np.arange(2)),
        "class_distribution": gate.class_distribution(y, y),
        "feedback": fb,
    }
    report["gate"] |= {"angle_threshold": 0.015, "tolerance": 0.002}
    flat = monitor.flat_metrics(report)
    assert flat["feedback_accuracy"] == 0.75 and flat["feedback_champion_accuracy"] == 0.25
    tags = monitor.version_tags(report, "abc", "md5")
    assert tags["feedback_accuracy"] == "0.750000" and tags["feedback_n"] == "4"


class _TagRecorder:
    def __init__(self):
        self.tags = {}

    def set_model_version_tag(self, name, version, key, value):
        self.tags[key] = value


def test_a_candidate_that_does_not_load_is_tagged_failed_but_a_bug_in_loading_surfaces(monkeypatch):
    from rotmnist.tracking import registry

    def broken(uri, version=None):
        raise registry.RegistryError(f"cannot load model {uri}: BadZipFile: File is not a zip file")

    monkeypatch.setattr(registry, "load_model", broken)
    client = _TagRecorder()
    with pytest.raises(PipelineError, match=r"candidate m version 2 \(runs:/r/model\) does not load: cannot load"):
        monitor.load_candidate(client, "m", "2", "runs:/r/model")
    assert client.tags["gate"] == "failed" and "BadZipFile" in client.tags["gate_reasons"]

    def buggy(uri, version=None):
        raise AttributeError("a bug in our own loading code")

    monkeypatch.setattr(registry, "load_model", buggy)
    client = _TagRecorder()
    with pytest.raises(AttributeError, match="a bug in our own loading code"):
        monitor.load_candidate(client, "m", "2", "runs:/r/model")
    assert client.tags == {}  # the version is not marked as a broken model
