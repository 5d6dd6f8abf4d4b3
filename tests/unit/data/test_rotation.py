"""Rotation: geometry against scipy, invariants, argument checks; the random and exhaustive datasets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage

from rotmnist.data import rotation
from rotmnist.data.dataset import Dataset
from rotmnist.data.mnist import MnistArrays, to_dataset
from rotmnist.data.rotation import exhaustive_dataset, generate_dataset, rotate, rotate_batch
from rotmnist.spec import ALLOWED_ANGLES
from tests.support.helpers import tiny_mnist

ALLOWED = "[-30, -20, -10, 10, 20, 30]"


def smooth_digit() -> np.ndarray:
    """A centred, MNIST-like uint8 digit: a blurred '7' with a bar, ink well inside the border."""
    canvas = np.zeros((28, 28))
    canvas[7:9, 8:20] = 1.0  # top bar
    for r in range(8, 22):  # the diagonal stroke
        canvas[r, int(19 - (r - 8) * 0.55)] = 1.0
    canvas[14, 10:18] = 1.0  # the crossing bar
    canvas = scipy.ndimage.gaussian_filter(canvas, 0.9)
    return np.clip(canvas / canvas.max() * 300, 0, 255).astype(np.uint8)


def blob(row: float, col: float, sigma: float = 2.0) -> np.ndarray:
    r, c = np.mgrid[0:28, 0:28]
    return np.rint(255 * np.exp(-((r - row) ** 2 + (c - col) ** 2) / (2 * sigma**2))).astype(np.uint8)


def centre_of_mass(image: np.ndarray) -> np.ndarray:
    return np.array(scipy.ndimage.center_of_mass(image.astype(np.float64)))


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return tiny_mnist(n_train=40, n_test=0, seed=3)[0]


@pytest.fixture(scope="module")
def tiny() -> Dataset:
    return to_dataset(MnistArrays(*tiny_mnist(n_train=8, n_test=2, seed=4)))


# --- the rotation -----------------------------------------------------------------------------------


def test_taps_are_bilinear_weights_in_fixed_point():
    for angle in ALLOWED_ANGLES:
        index, weights = rotation.taps(angle)
        assert index.shape == weights.shape == (4, 784) and weights.dtype == np.uint16
        assert index.min() >= 0 and index.max() < 784
        total = weights.sum(axis=0)
        assert total.max() == 256  # never more than one whole source pixel
        assert (total == 256).mean() > 0.75  # inside the rotated frame, weights sum to exactly 1
        assert not weights.flags.writeable


@pytest.mark.parametrize("angle", ALLOWED_ANGLES)
def test_rotate_matches_scipy_bilinear(digits, angle):
    ours = rotate_batch(digits, angle).astype(np.float64)
    theirs = np.stack([scipy.ndimage.rotate(d, angle, reshape=False, order=1) for d in digits]).astype(np.float64)
    assert np.abs(ours - theirs).mean() < 0.5  # grey levels; scipy's 'constant' mode differs only at the border
    # With the same border rule, the only difference is the weights' 1/256 quantisation.
    exact = np.stack(
        [
            scipy.ndimage.rotate(d.astype(np.float64), angle, reshape=False, order=1, mode="grid-constant")
            for d in digits
        ]
    )
    assert np.abs(ours - exact).max() <= 2.0
    assert not np.array_equal(ours, digits)


@pytest.mark.parametrize("angle", ALLOWED_ANGLES)
def test_positive_angles_turn_counter_clockwise_as_displayed(angle):
    # A blob 8 pixels right of the centre; rows grow downwards, so counter-clockwise moves it up (smaller row).
    rotated = rotate(blob(13.5, 21.5), angle)
    theta = math.radians(angle)
    expected = (13.5 - 8 * math.sin(theta), 13.5 + 8 * math.cos(theta))
    np.testing.assert_allclose(centre_of_mass(rotated), expected, atol=0.15)
    theirs = scipy.ndimage.rotate(blob(13.5, 21.5), angle, reshape=False, order=1)
    np.testing.assert_allclose(centre_of_mass(rotated), centre_of_mass(theirs), atol=0.05)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_rotate_keeps_shape_and_dtype(dtype):
    out = rotate(smooth_digit().astype(dtype), 20)
    assert out.shape == (28, 28) and out.dtype == dtype


def test_a_symmetric_blob_stays_the_same():
    image = blob(13.5, 13.5, sigma=3.0)
    for angle in ALLOWED_ANGLES:
        diff = np.abs(rotate(image, angle).astype(int) - image)
        assert diff.max() <= 6 and diff.mean() < 1.0  # bilinear smoothing of the peak, nothing more


@pytest.mark.parametrize("angle", [10, 20, 30])
def test_rotating_back_restores_the_digit(angle):
    image = smooth_digit()
    there_and_back = rotate(rotate(image, angle), -angle).astype(int)
    error = np.abs(there_and_back - image).mean()
    assert error < 4.0  # grey levels: two bilinear resamplings blur a little
    assert np.abs(rotate(image, angle).astype(int) - image).mean() > 2 * error  # one way alone changes it far more
    np.testing.assert_allclose(centre_of_mass(there_and_back), centre_of_mass(image), atol=0.1)


@pytest.mark.parametrize("angle", ALLOWED_ANGLES)
def test_rotation_preserves_the_ink_of_a_centred_digit(angle):
    image = smooth_digit()
    assert rotate(image, angle).sum(dtype=np.int64) == pytest.approx(image.sum(dtype=np.int64), rel=0.01)


def test_one_image_gives_the_pixels_of_the_batched_path(digits):
    for angle in ALLOWED_ANGLES:
        batched = rotate_batch(digits, angle)
        for chunk_size, workers in ((1, 1), (7, 2), (16, 4), (1000, 3)):
            np.testing.assert_array_equal(rotate_batch(digits, angle, chunk_size=chunk_size, workers=workers), batched)
        for i in (0, 17, len(digits) - 1):
            np.testing.assert_array_equal(rotate(digits[i], angle), batched[i])


def test_float_images_rotate_like_uint8_before_rounding(digits):
    for dtype in (np.float32, np.float64):
        rotated = rotate_batch(digits.astype(dtype), -20)
        assert rotated.dtype == dtype
        np.testing.assert_array_equal(np.floor(rotated + 0.5).astype(np.uint8), rotate_batch(digits, -20))
        np.testing.assert_array_equal(rotate(digits[3].astype(dtype), -20), rotated[3])


def test_accepts_numpy_and_integral_float_angles():
    image = smooth_digit()
    np.testing.assert_array_equal(rotate(image, np.int64(-10)), rotate(image, -10))
    np.testing.assert_array_equal(rotate(image, 30.0), rotate(image, 30))


def test_rotate_does_not_modify_its_input(digits):
    before = digits.copy()
    rotate_batch(digits, 10)
    rotate(digits[0], 10)
    np.testing.assert_array_equal(digits, before)


@pytest.mark.parametrize("angle", [0, 15, 45, -40, 360, float("nan"), 10.5])
def test_rotate_refuses_angles_outside_the_set(angle):
    with pytest.raises(ValueError, match=rf"angle must be one of \{ALLOWED}"):
        rotate(smooth_digit(), angle)


@pytest.mark.parametrize("angle", [True, "10", None, [10]])
def test_rotate_refuses_non_numeric_angles(angle):
    with pytest.raises(TypeError, match=rf"angle must be a number, one of \{ALLOWED}"):
        rotate(smooth_digit(), angle)


@pytest.mark.parametrize(
    ("image", "error", "message"),
    [
        (smooth_digit().tolist(), TypeError, r"image must be a numpy array of shape \(28, 28\), got list"),
        (np.zeros((28, 27), np.uint8), ValueError, r"image must have shape \(28, 28\), got \(28, 27\)"),
        (np.zeros((1, 28, 28), np.uint8), ValueError, r"image must have shape \(28, 28\), got \(1, 28, 28\)"),
        (np.zeros((28, 28), np.int64), TypeError, "image must have dtype uint8, float32, float64; got int64"),
        (np.zeros((28, 28), bool), TypeError, "image must have dtype uint8, float32, float64; got bool"),
        (np.full((28, 28), np.nan), ValueError, "image holds NaN or infinite pixels"),
        (np.full((28, 28), np.inf, np.float32), ValueError, "image holds NaN or infinite pixels"),
    ],
)
def test_rotate_refuses_bad_images(image, error, message):
    with pytest.raises(error, match=message):
        rotate(image, 10)


def test_rotate_batch_checks_its_arguments():
    with pytest.raises(ValueError, match=r"images must have shape \(N, 28, 28\), got \(28, 28\)"):
        rotate_batch(smooth_digit(), 10)
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1, got 0"):
        rotate_batch(smooth_digit()[None], 10, chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size must be an integer >= 1, got float"):
        rotate_batch(smooth_digit()[None], 10, chunk_size=2.0)
    assert rotate_batch(np.zeros((0, 28, 28), np.uint8), 10).shape == (0, 28, 28)


# --- generate_dataset (the random strategy) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "expected"),
    [(0, 20), (0.5, 20), (0.999, 20), (1.0, 10), (1.05, 10), (2.5, 25), (7, 70), (2.55, 25), (np.float32(3.0), 30)],
)
def test_generate_dataset_counts(tiny, rate, expected):
    # rate < 1 means 2 (1 itself is kept: no new images); int(n * (rate - 1)) new ones: 10 * 1.55 = 15.5 -> 15.
    out = generate_dataset(tiny, rate)
    assert len(out) == expected
    assert len(generate_dataset(tiny.x, rate)) == expected


def test_generated_rows_are_rotations_of_their_source(tiny):
    out = generate_dataset(tiny, 4.0, seed=5)
    n = len(tiny)
    for field in ("x", "y", "source_id", "angle", "mnist_split"):
        np.testing.assert_array_equal(getattr(out, field)[:n], getattr(tiny, field))  # originals first, untouched
    new = out.take(np.arange(n, len(out)))
    assert set(new.angle.tolist()) <= set(ALLOWED_ANGLES) and 0 not in new.angle
    source = new.source_id  # tiny's source ids are its row numbers
    np.testing.assert_array_equal(new.y, tiny.y[source])
    np.testing.assert_array_equal(new.mnist_split, tiny.mnist_split[source])
    for i in range(len(new)):
        np.testing.assert_array_equal(new.x[i], rotate(tiny.x[source[i]], int(new.angle[i])))
    assert len(np.unique(source)) > 1 and len(np.unique(new.angle)) > 1  # actually random


def test_generate_dataset_is_seeded(tiny):
    first, again = generate_dataset(tiny, 5.0, seed=11), generate_dataset(tiny, 5.0, seed=11)
    for field in ("x", "y", "source_id", "angle", "mnist_split"):
        assert getattr(first, field).tobytes() == getattr(again, field).tobytes()
    other = generate_dataset(tiny, 5.0, seed=12)
    assert not np.array_equal(first.source_id, other.source_id) or not np.array_equal(first.angle, other.angle)
    from_generator = generate_dataset(tiny, 5.0, seed=np.random.default_rng(11))
    np.testing.assert_array_equal(from_generator.x, first.x)


def test_generate_dataset_on_an_array_draws_like_on_a_dataset(tiny):
    images = generate_dataset(tiny.x, 3.0, seed=2)
    assert isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape == (30, 28, 28)
    np.testing.assert_array_equal(images, generate_dataset(tiny, 3.0, seed=2).x)
    floats = generate_dataset(tiny.x.astype(np.float32), 3.0, seed=2)
    assert floats.dtype == np.float32
    np.testing.assert_array_equal(np.floor(floats + 0.5).astype(np.uint8), images)


def test_generate_dataset_uses_only_the_given_angles(tiny):
    out = generate_dataset(tiny, 6.0, angles=[-10, 20])
    assert set(out.angle[len(tiny) :].tolist()) == {-10, 20}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"oversample_rate": "2"}, TypeError, "oversample_rate must be a real number >= 0, got str"),
        ({"oversample_rate": True}, TypeError, "oversample_rate must be a real number >= 0, got bool"),
        ({"oversample_rate": None}, TypeError, "oversample_rate must be a real number >= 0, got NoneType"),
        ({"oversample_rate": float("nan")}, ValueError, r"oversample_rate must be a finite number >= 0 .*got nan"),
        ({"oversample_rate": float("inf")}, ValueError, r"oversample_rate must be a finite number >= 0 .*got inf"),
        ({"oversample_rate": -0.5}, ValueError, r"oversample_rate must be a finite number >= 0 \(below 1 means 2\)"),
        ({"oversample_rate": 2, "angles": [0, 10]}, ValueError, rf"each of angles must be one of \{ALLOWED}"),
        ({"oversample_rate": 2, "angles": []}, ValueError, "angles must be a non-empty list of distinct angles"),
        ({"oversample_rate": 2, "angles": [10, 10]}, ValueError, "angles must be a non-empty list of distinct"),
        ({"oversample_rate": 2, "angles": 10}, TypeError, "angles must be a sequence of angles"),
        ({"oversample_rate": 2, "seed": -1}, ValueError, "seed must be an integer >= 0 or a numpy Generator"),
        ({"oversample_rate": 2, "seed": 1.5}, TypeError, "seed must be an integer >= 0 or a numpy Generator"),
    ],
)
def test_generate_dataset_refuses_bad_arguments(tiny, kwargs, error, message):
    with pytest.raises(error, match=message):
        generate_dataset(tiny, **kwargs)


def test_generate_dataset_refuses_bad_datasets(tiny):
    with pytest.raises(
        TypeError, match=r"dataset must be a rotmnist.data.dataset.Dataset or a numpy array of shape \(N, 28"
    ):
        generate_dataset(tiny.x.tolist(), 2)
    with pytest.raises(ValueError, match=r"dataset must have shape \(N, 28, 28\), got \(10, 784\)"):
        generate_dataset(tiny.x.reshape(10, 784), 2)
    with pytest.raises(ValueError, match="dataset holds NaN"):
        generate_dataset(np.full((2, 28, 28), np.nan), 2)
    rotated = exhaustive_dataset(tiny, [10])
    with pytest.raises(ValueError, match=r"dataset must hold upright images \(angle 0\) only; it has angles \[10\]"):
        generate_dataset(rotated, 2)
    assert generate_dataset(np.zeros((0, 28, 28), np.uint8), 2).shape == (0, 28, 28)  # nothing to draw, nothing new


# --- exhaustive_dataset (the default strategy) -------------------------------------------------------------


def test_exhaustive_puts_every_source_at_every_angle(tiny):
    out = exhaustive_dataset(tiny)
    n = len(tiny)
    assert len(out) == 7 * n
    assert out.x.dtype == np.uint8 and out.angle.dtype == np.int8 and out.source_id.dtype == np.int32
    angles, counts = np.unique(out.angle, return_counts=True)
    assert angles.tolist() == sorted((0, *ALLOWED_ANGLES)) and set(counts.tolist()) == {n}
    pairs = set(zip(out.source_id.tolist(), out.angle.tolist(), strict=True))
    assert len(pairs) == 7 * n  # every (source, angle) exactly once
    # Ordering: the originals, then one block per angle in the given order, each in input order.
    for k, angle in enumerate((0, *ALLOWED_ANGLES)):
        block = out.take(np.arange(k * n, (k + 1) * n))
        assert set(block.angle.tolist()) == {angle}
        for field in ("y", "source_id", "mnist_split"):
            np.testing.assert_array_equal(getattr(block, field), getattr(tiny, field))
        expected = tiny.x if angle == 0 else rotate_batch(tiny.x, angle)
        np.testing.assert_array_equal(block.x, expected)


def test_exhaustive_with_some_angles(tiny):
    out = exhaustive_dataset(tiny, [30, -10])
    assert len(out) == 3 * len(tiny)
    assert out.angle.tolist() == [0] * 10 + [30] * 10 + [-10] * 10


def test_exhaustive_is_byte_identical_for_any_chunking(tiny):
    reference = exhaustive_dataset(tiny)
    for chunk_size in (1, 3, 10, 4096):
        again = exhaustive_dataset(tiny, chunk_size=chunk_size)
        assert again.x.tobytes() == reference.x.tobytes()


def test_exhaustive_checks_its_arguments(tiny):
    with pytest.raises(TypeError, match=r"ds must be a rotmnist\.data\.dataset\.Dataset, got ndarray"):
        exhaustive_dataset(tiny.x)
    with pytest.raises(ValueError, match=rf"each of angles must be one of \{ALLOWED}"):
        exhaustive_dataset(tiny, [5])
    with pytest.raises(ValueError, match="upright images"):
        exhaustive_dataset(exhaustive_dataset(tiny, [10]))
