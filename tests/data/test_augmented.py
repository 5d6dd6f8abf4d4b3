"""What the augment stage writes: data/augmented, from a tiny data/raw, by either strategy."""

from __future__ import annotations

import numpy as np
import pytest

from rotmnist.config import AugmentConfig, Config
from rotmnist.data import rotation
from rotmnist.data.dataset import MNIST_TEST, MNIST_TRAIN, load_dataset, save_dataset
from rotmnist.data.mnist import MnistArrays, to_dataset
from rotmnist.errors import PipelineError
from rotmnist.paths import Paths
from rotmnist.spec import ALLOWED_ANGLES
from rotmnist.stages import augment
from tests.support.helpers import tiny_mnist

N_TRAIN, N_TEST = 30, 12
N = N_TRAIN + N_TEST
DTYPES = {"x": np.uint8, "y": np.uint8, "source_id": np.int32, "angle": np.int8, "mnist_split": np.int8}


@pytest.fixture
def paths(tmp_path):
    return Paths(root=tmp_path / "repo", store_root=tmp_path / "repo")


@pytest.fixture
def raw(paths):
    ds = to_dataset(MnistArrays(*tiny_mnist(n_train=N_TRAIN, n_test=N_TEST, seed=5)))
    save_dataset(ds, paths.raw)
    return ds


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_the_default_stage_writes_every_image_at_every_angle(paths, raw):
    augment.main(Config(), paths)
    out = load_dataset(paths.augmented)

    assert len(out) == 7 * N
    for name, dtype in DTYPES.items():
        assert getattr(out, name).dtype == dtype, name
    angles, counts = np.unique(out.angle, return_counts=True)
    assert angles.tolist() == [-30, -20, -10, 0, 10, 20, 30] and counts.tolist() == [N] * 7
    # Every source at every angle exactly once, with its own label and MNIST split.
    pairs = set(zip(out.source_id.tolist(), out.angle.tolist(), strict=True))
    assert pairs == {(s, a) for s in range(N) for a in (0, *ALLOWED_ANGLES)}
    np.testing.assert_array_equal(out.y, raw.y[out.source_id])
    np.testing.assert_array_equal(out.mnist_split, raw.mnist_split[out.source_id])
    assert (out.mnist_split == MNIST_TEST).sum() == 7 * N_TEST and (out.mnist_split == MNIST_TRAIN).sum() == 7 * N_TRAIN
    # Originals first, byte for byte; then one block per angle, in params order, each a rotation of the raw images.
    for field in DTYPES:
        np.testing.assert_array_equal(getattr(out, field)[:N], getattr(raw, field))
    for k, angle in enumerate(ALLOWED_ANGLES, start=1):
        block = slice(k * N, (k + 1) * N)
        assert set(out.angle[block].tolist()) == {angle}
        np.testing.assert_array_equal(out.x[block], rotation.rotate_batch(raw.x, angle))
        assert not np.array_equal(out.x[block], raw.x)
    # Ink is roughly preserved (digits sit inside the frame), so nothing got blanked or saturated.
    ink = out.x.reshape(7, N, -1).sum(axis=2, dtype=np.int64)
    np.testing.assert_allclose(ink[1:], np.broadcast_to(ink[0], ink[1:].shape), rtol=0.1)


def test_rerunning_the_stage_gives_byte_identical_files(paths, raw):
    augment.main(Config(), paths)
    first = snapshot(paths.augmented)
    augment.main(Config(), paths)
    assert snapshot(paths.augmented) == first
    assert sorted(first) == sorted(f"{name}.npy" for name in DTYPES)
    leftovers = [p.name for p in paths.augmented.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the atomic write left no temporary folder behind


def test_the_random_strategy_is_selectable_and_seeded(paths, raw):
    config = Config(augment=AugmentConfig(strategy="random", oversample_rate=3.5, seed=3, angles=(-20, 10)))
    augment.main(config, paths)
    out = load_dataset(paths.augmented)
    assert len(out) == N + int(N * 2.5)
    for field in DTYPES:
        np.testing.assert_array_equal(getattr(out, field)[:N], getattr(raw, field))
    assert set(out.angle[N:].tolist()) == {-20, 10}
    np.testing.assert_array_equal(out.y, raw.y[out.source_id])
    np.testing.assert_array_equal(out.mnist_split, raw.mnist_split[out.source_id])
    for i in range(N, len(out)):
        np.testing.assert_array_equal(out.x[i], rotation.rotate(raw.x[out.source_id[i]], int(out.angle[i])))
    first = snapshot(paths.augmented)
    augment.main(config, paths)
    assert snapshot(paths.augmented) == first


def test_a_subset_of_angles(paths, raw):
    augment.main(Config(augment=AugmentConfig(angles=(30,))), paths)
    out = load_dataset(paths.augmented)
    assert out.angle.tolist() == [0] * N + [30] * N


def test_missing_or_rotated_raw_data_is_a_clear_error(paths):
    with pytest.raises(PipelineError, match="run the stage that writes it"):
        augment.main(Config(), paths)
    ds = to_dataset(MnistArrays(*tiny_mnist(n_train=10, n_test=10, seed=1)))
    save_dataset(rotation.exhaustive_dataset(ds, [10]), paths.raw)
    with pytest.raises(PipelineError, match=r"holds rotated images \(angle != 0\); augment expects upright MNIST"):
        augment.main(Config(), paths)
    assert not paths.augmented.exists()
    save_dataset(ds.take(np.zeros(len(ds), bool)), paths.raw)
    with pytest.raises(PipelineError, match="holds no images; re-run `rotmnist download`"):
        augment.main(Config(), paths)
