"""Any image to MNIST's 28x28 format, and the image readers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rotmnist.data import images
from rotmnist.errors import PipelineError


def digit_one(size: int = 28, ink: int = 255, paper: int = 0) -> np.ndarray:
    """A vertical bar ("1") left of centre on a square canvas."""
    img = np.full((size, size), paper, np.uint8)
    img[size // 4 : 3 * size // 4, size // 3 : size // 3 + max(1, size // 14)] = ink
    return img


def centre_of_mass(img: np.ndarray) -> tuple[float, float]:
    w = img.astype(float)
    return (w.sum(1) @ np.arange(28)) / w.sum(), (w.sum(0) @ np.arange(28)) / w.sum()


def test_a_28x28_image_is_prepared_like_any_other_size():
    out = images.to_mnist_image(digit_one())  # a 14-px bar left of centre
    rows, _ = np.nonzero(out > 50)
    assert rows.max() - rows.min() + 1 in (19, 20, 21)
    cy, cx = centre_of_mass(out)
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1


def test_a_prepared_digit_prepared_again_moves_at_most_one_pixel():
    from tests.support.helpers import digit_templates

    for template in digit_templates():
        digit = images.to_mnist_image(template * 255)
        again = images.to_mnist_image(digit) > 127
        ink = digit > 127
        overlaps = [
            (np.roll(again, (dy, dx), (0, 1)) & ink).sum() / (np.roll(again, (dy, dx), (0, 1)) | ink).sum()
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        ]
        assert max(overlaps) > 0.95


def test_dark_on_light_is_inverted():
    out = images.to_mnist_image(digit_one(ink=0, paper=255))
    assert np.array_equal(out, images.to_mnist_image(digit_one()))


def test_a_large_image_is_cropped_scaled_to_20px_and_centred():
    out = images.to_mnist_image(digit_one(size=280, ink=20, paper=250))  # dark ink on light paper
    assert out.shape == (28, 28) and out.dtype == np.uint8
    rows, _ = np.nonzero(out > 50)
    assert rows.max() - rows.min() + 1 in (19, 20, 21)  # the tall side fits 20 px
    cy, cx = centre_of_mass(out)
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1
    assert images.to_mnist_image(np.zeros((50, 40))).sum() == 0
    with pytest.raises(ValueError, match="2-D grayscale"):
        images.to_mnist_image(np.zeros((3, 28, 28)))


def test_read_png_any_mode(tmp_path):
    gray = digit_one(size=56, ink=0, paper=255)
    Image.fromarray(gray).convert("RGB").save(tmp_path / "rgb.png")
    rgba = np.zeros((56, 56, 4), np.uint8)  # black ink on a transparent canvas: alpha is the ink
    rgba[..., 3] = 255 - gray
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    a = images.read_image(tmp_path / "rgb.png")
    b = images.read_image(tmp_path / "rgba.png")
    assert a.shape == b.shape == (28, 28)
    assert a.max() == 255 and a.mean() < 60  # white digit on black
    assert np.array_equal(a, b)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(PipelineError, match=r"cannot read .*bad\.png as an image"):
        images.read_image(tmp_path / "bad.png")


def test_read_npy_shapes_and_ranges(tmp_path):
    np.save(tmp_path / "one.npy", digit_one())
    np.save(tmp_path / "many.npy", np.stack([digit_one()] * 3).astype(np.float64))
    np.save(tmp_path / "unit.npy", np.stack([digit_one()] * 3).astype(np.float64) / 255.0)
    np.save(tmp_path / "flat.npy", np.zeros((3, 784)))
    np.save(tmp_path / "neg.npy", -np.ones((1, 28, 28)))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert images.read_npy(tmp_path / "one.npy").shape == (1, 28, 28)
    many = images.read_npy(tmp_path / "many.npy")
    assert many.dtype == np.float32 and many.shape == (3, 28, 28) and many.max() == pytest.approx(255.0)
    with pytest.raises(PipelineError, match=r"scaled to \[0, 1\]; pass values in 0..255"):
        images.read_npy(tmp_path / "unit.npy")  # refused like learn_model refuses it, never guessed
    with pytest.raises(PipelineError, match=r"shape \(N, 28, 28\)"):
        images.read_npy(tmp_path / "flat.npy")
    with pytest.raises(PipelineError, match=r"must be in 0\.\.255"):
        images.read_npy(tmp_path / "neg.npy")
    with pytest.raises(PipelineError, match="cannot read"):
        images.read_npy(tmp_path / "obj.npy")  # pickled object arrays are never loaded


def test_read_images_names_each_image(tmp_path):
    Image.fromarray(digit_one()).save(tmp_path / "a.png")
    np.save(tmp_path / "b.npy", np.stack([digit_one()] * 2))
    names, x = images.read_images([tmp_path / "a.png", tmp_path / "b.npy"])
    assert names == [str(tmp_path / "a.png"), f"{tmp_path / 'b.npy'}[0]", f"{tmp_path / 'b.npy'}[1]"]
    assert x.shape == (3, 28, 28) and x.dtype == np.float32
    with pytest.raises(PipelineError, match="does not exist"):
        images.read_images([tmp_path / "missing.png"])
