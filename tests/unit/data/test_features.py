"""Label-free digit features: tilt against the project's rotation, ink mass, the inked box, blank images."""

from __future__ import annotations

import numpy as np
import pytest

from rotmnist.data.features import bbox_size, ink_mass, tilt_degrees
from rotmnist.data.rotation import rotate_batch
from tests.support.helpers import tiny_mnist


def stroke(angle: float, length: float = 16.0, width: float = 1.5) -> np.ndarray:
    """A straight white bar through the centre, `angle` degrees counter-clockwise from vertical (as displayed)."""
    r, c = np.mgrid[0:28, 0:28] - 13.5
    theta = np.radians(angle)
    along = -r * np.cos(theta) - c * np.sin(theta)  # the bar's direction: up, turned counter-clockwise
    across = -r * np.sin(theta) + c * np.cos(theta)
    bar = (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)
    return np.where(bar, 255, 0).astype(np.uint8)[None]


def wrapped(degrees: np.ndarray) -> np.ndarray:
    """Angles between axes, in [-90, 90): an axis at 89 and one at -89 are 2 degrees apart."""
    return (degrees + 90) % 180 - 90


def test_features_have_one_value_per_image():
    x = tiny_mnist(n_train=12, n_test=0)[0]
    assert tilt_degrees(x).shape == (12,)
    assert ink_mass(x).shape == (12,)
    assert bbox_size(x).shape == (12, 2)


def test_a_blank_image_has_no_tilt_no_ink_and_an_empty_box():
    blank = np.zeros((3, 28, 28), np.uint8)
    assert tilt_degrees(blank).tolist() == [0.0, 0.0, 0.0]
    assert ink_mass(blank).tolist() == [0.0, 0.0, 0.0]
    assert bbox_size(blank).tolist() == [[0, 0]] * 3


def test_a_vertical_stroke_is_upright_and_a_horizontal_one_is_90():
    assert tilt_degrees(stroke(0))[0] == pytest.approx(0.0, abs=1e-9)
    assert tilt_degrees(stroke(90))[0] == pytest.approx(90.0, abs=1e-9)


@pytest.mark.parametrize("angle", [-60, -30, -10, 20, 45])
def test_a_stroke_turned_counter_clockwise_has_that_tilt(angle):
    assert tilt_degrees(stroke(angle))[0] == pytest.approx(angle, abs=2.0)


def test_mirroring_an_image_negates_its_tilt():
    x = tiny_mnist(n_train=40, n_test=0, seed=3)[0]
    np.testing.assert_allclose(wrapped(tilt_degrees(x[:, :, ::-1]) + tilt_degrees(x)), 0.0, atol=1e-6)


def test_turning_an_image_by_180_degrees_keeps_its_tilt():
    x = tiny_mnist(n_train=40, n_test=0, seed=4)[0]
    np.testing.assert_allclose(wrapped(tilt_degrees(x[:, ::-1, ::-1]) - tilt_degrees(x)), 0.0, atol=1e-6)


@pytest.mark.parametrize("angle", [-30, 10, 30])
def test_rotating_digits_by_an_angle_adds_that_angle_to_their_tilt(angle):
    """The sign convention is the project's: `rotate(image, +30)` makes digits lean 30 degrees more."""
    x = tiny_mnist(n_train=200, n_test=0, seed=1)[0]
    shift = wrapped(tilt_degrees(rotate_batch(x, angle)) - tilt_degrees(x))
    assert shift.mean() == pytest.approx(angle, abs=1.5)
    assert np.mean(np.abs(shift - angle) < 5) > 0.9  # a few round digits (0, 8) have a looser axis


def test_ink_mass_counts_full_white_pixels():
    x = np.zeros((2, 28, 28), np.uint8)
    x[0, 3:5, 3:8] = 255  # ten white pixels
    x[1, 0, 0] = 51  # a fifth of one
    np.testing.assert_allclose(ink_mass(x), [10.0, 0.2])


def test_the_box_spans_the_pixels_above_the_threshold_only():
    x = np.zeros((1, 28, 28), np.uint8)
    x[0, 4:20, 10:15] = 200
    x[0, 0, 0] = x[0, 27, 27] = 30  # faint noise in the corners
    assert bbox_size(x).tolist() == [[16, 5]]
    assert bbox_size(x, threshold=0).tolist() == [[28, 28]]


def test_images_of_another_shape_are_refused():
    with pytest.raises(ValueError, match=r"shape \(N, 28, 28\), got \(28, 28\)"):
        tilt_degrees(np.zeros((28, 28), np.uint8))
