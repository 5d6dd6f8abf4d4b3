"""Upright digits turned across the circle: the pipeline's rotation at any angle, and the accuracy per angle."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rotmnist.data.rotation import rotate_batch
from rotmnist.learning.circle import circle_accuracy, far_angles, turned
from rotmnist.learning.metrics import worst_angle
from rotmnist.spec import ALLOWED_ANGLES, CIRCLE
from tests.support.datasets import digit_dataset


@pytest.mark.parametrize("angle", ALLOWED_ANGLES)
def test_at_a_trained_angle_a_turn_is_the_pipelines_rotation_within_2_grey_levels(angle):
    x = digit_dataset(50, seed=0).x
    assert np.abs(turned(x, angle) - rotate_batch(x, angle)).max() <= 2.0


def test_a_quarter_turn_is_counter_clockwise_as_displayed_and_zero_changes_nothing():
    x = np.zeros((1, 28, 28), np.uint8)
    x[0, 4:14, 13:15] = 200  # a bar above the centre
    assert np.array_equal(turned(x, 0), x.astype(np.float32))
    left = turned(x, 90)[0]
    assert left[13:15, 4:14].mean() > 150 and left[4:12, 13:15].max() < 1  # now left of the centre, not above
    assert np.abs(turned(turned(x, 90), -90) - x).max() < 1e-3  # exact on the pixel grid


def test_accuracy_per_angle_counts_the_upright_rows_turned():
    data = digit_dataset(40, seed=1)
    data = dataclasses.replace(data, angle=np.where(np.arange(40) < 30, 0, 10).astype(data.angle.dtype))
    seen = []

    def predict_proba(x):  # right on the first 15 rows, whatever the angle; records what it was given
        seen.append(x)
        probs = np.zeros((len(x), 10), np.float32)
        probs[np.arange(len(x)), np.where(np.arange(len(x)) < 15, data.y[:30], (data.y[:30] + 1) % 10)] = 1
        return probs

    accuracy = circle_accuracy(predict_proba, data, (-45, 0, 60))
    assert accuracy == {"-45": 0.5, "0": 0.5, "60": 0.5}
    assert [len(x) for x in seen] == [30, 30, 30] and all(x.dtype == np.float32 for x in seen)
    assert np.array_equal(seen[1], data.x[:30].astype(np.float32))
    with pytest.raises(ValueError, match="no upright digit"):
        circle_accuracy(predict_proba, data.take(data.angle != 0), (0,))


def test_the_far_angles_are_beyond_the_trained_ones_and_the_worst_is_the_lowest():
    accuracy = {str(a): 1 - abs(a) / 100 for a in CIRCLE}
    assert sorted(map(int, far_angles(accuracy))) == [-90, -75, -60, -45, 45, 60, 75, 90]
    assert worst_angle(far_angles(accuracy)) == (-90, pytest.approx(0.1))
    assert far_angles({"-30": 0.9, "0": 0.9, "30": 0.9}) == {}
