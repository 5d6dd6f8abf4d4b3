"""Drift without labels: PSI, the KS test and the verdict that tells a risky move from a narrower stream."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rotmnist.config import DriftConfig
from rotmnist.learning import drift
from rotmnist.reports import metrics_problems

CFG = DriftConfig()
RNG = np.random.default_rng(0)
# A reference like training's tilts: spread over the trained angles; its top probabilities are high.
REFERENCE = {"tilt_degrees": RNG.uniform(-40, 40, 10_000), "top_probability": RNG.beta(40, 1, 10_000)}


def recent(tilts: np.ndarray, top: np.ndarray | None = None) -> dict[str, np.ndarray]:
    return {"tilt_degrees": tilts, "top_probability": RNG.beta(40, 1, len(tilts)) if top is None else top}


def test_psi_is_zero_for_one_distribution_and_grows_with_the_shift():
    x = RNG.normal(0, 1, 20_000)
    assert drift.psi(x, RNG.normal(0, 1, 5_000), 10) < 0.01
    shifts = [drift.psi(x, RNG.normal(shift, 1, 5_000), 10) for shift in (0.25, 0.5, 1.0)]
    assert shifts == sorted(shifts) and shifts[-1] > 0.5


def test_psi_stays_finite_when_a_bin_is_empty():
    assert np.isfinite(drift.psi(RNG.normal(0, 1, 1000), np.full(100, 50.0), 10))


def test_the_same_stream_is_ok():
    report = drift.compare(REFERENCE, recent(RNG.uniform(-40, 40, 2000)), CFG)
    assert report["verdict"] == drift.OK and report["drifted"] == ""


@pytest.mark.parametrize("shift", [45, -45, 60])
def test_a_stream_tilted_beyond_the_trained_angles_is_harmful(shift):
    report = drift.compare(REFERENCE, recent(RNG.uniform(-10, 10, 2000) + shift), CFG)
    assert report["verdict"] == drift.HARMFUL and "tilt_degrees" in report["drifted"].split(", ")
    assert report["features"]["tilt_degrees"]["outside_share"] > drift.EXPECTED_OUTSIDE + CFG.outside_share


def test_a_narrower_stream_drifts_but_is_not_harmful():
    report = drift.compare(REFERENCE, recent(RNG.uniform(-10, 10, 2000)), CFG)
    assert report["verdict"] == drift.NARROWER and report["drifted"] == "tilt_degrees"
    assert report["features"]["tilt_degrees"]["outside_share"] < drift.EXPECTED_OUTSIDE


def test_a_less_sure_model_is_harmful_even_at_familiar_tilts():
    report = drift.compare(REFERENCE, recent(RNG.uniform(-40, 40, 2000), RNG.beta(4, 1, 2000)), CFG)
    assert report["verdict"] == drift.HARMFUL and report["drifted"] == "top_probability"


def test_the_report_is_json_without_nulls_and_names_its_thresholds():
    report = drift.compare(REFERENCE, recent(RNG.uniform(-10, 10, 500)), CFG)
    assert metrics_problems(report) == []  # what DVC cannot show: nulls, lists, NaN
    assert "null" not in json.dumps(report)
    assert report["reference_images"] == 10_000 and report["recent_images"] == 500
    assert report["thresholds"] == {"psi": 0.2, "p_value": 0.01, "outside_share": 0.05}


def test_nothing_to_compare_is_a_clear_error():
    with pytest.raises(ValueError, match="no feature to compare"):
        drift.compare({"a": np.zeros(3)}, {"a": np.zeros(3)}, CFG)
    with pytest.raises(ValueError, match="0 recent values"):
        drift.compare_feature(np.zeros(3), np.zeros(0), CFG)
