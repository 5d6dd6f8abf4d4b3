"""The split stage's pure functions: sizes, stratified order, assignment by source, manifest, errors."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from rotmnist.config import SplitConfig
from rotmnist.data.dataset import MNIST_TEST, MNIST_TRAIN, Dataset
from rotmnist.data.split import (
    build_manifest,
    row_splits,
    source_table,
    split_dataset,
    split_sizes,
    stratified_order,
)
from rotmnist.errors import PipelineError
from rotmnist.paths import SPLITS

ANGLES = (0, -30, -10, 20)


def make_dataset(n_train: int = 200, n_test: int = 50, angles=ANGLES, seed: int = 0, shuffle: bool = True) -> Dataset:
    """Every source at every angle; pixel [0, 0] holds source_id % 251 and [0, 1] the angle, to trace rows."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    y = np.concatenate([rng.permutation(np.arange(n_train) % 10), rng.permutation(np.arange(n_test) % 10)])
    source = np.tile(np.arange(n, dtype=np.int32), len(angles))
    angle = np.repeat(np.array(angles, np.int8), n)
    x = np.zeros((len(source), 28, 28), np.uint8)
    x[:, 0, 0] = source % 251
    x[:, 0, 1] = angle.astype(np.uint8)
    ds = Dataset(
        x=x,
        y=y[source].astype(np.uint8),
        source_id=source,
        angle=angle,
        mnist_split=(source >= n_train).astype(np.int8),
    )
    return ds.take(rng.permutation(len(ds))) if shuffle else ds


def cfg(val: float = 0.2, holdout: float = 0.1, seed: int = 0) -> SplitConfig:
    return SplitConfig(val_fraction=val, holdout_fraction=holdout, seed=seed)


def source_codes(ds: Dataset, codes: np.ndarray) -> dict[int, int]:
    """source_id -> its split code; fails if any source has rows in two splits."""
    pairs = np.unique(np.stack([ds.source_id, codes]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1], "a source has rows in more than one split"
    return dict(zip(pairs[0].tolist(), pairs[1].tolist(), strict=True))


# --- split_sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "val", "holdout", "expected"),
    [
        (60_000, 0.1, 0.05, {"train": 51_000, "val": 6_000, "holdout": 3_000}),
        (300, 0.2, 0.2, {"train": 180, "val": 60, "holdout": 60}),
        (10, 0.25, 0.15, {"train": 5, "val": 3, "holdout": 2}),  # 2.5 and 1.5 round half up
        (3, 0.2, 0.2, {"train": 1, "val": 1, "holdout": 1}),
    ],
)
def test_split_sizes_round_half_up_and_add_up(n, val, holdout, expected):
    sizes = split_sizes(n, val, holdout)
    assert sizes == expected
    assert sum(sizes.values()) == n


@pytest.mark.parametrize(
    ("n", "val", "holdout", "message"),
    [
        (100, 0.001, 0.1, "split 'val' would be empty: split.val_fraction=0.001 of 100 MNIST training sources"),
        (100, 0.1, 0.004, "split 'holdout' would be empty: split.holdout_fraction=0.004 of 100"),
        (2, 0.3, 0.3, "split 'train' would be empty: split.val_fraction=0.3 and split.holdout_fraction=0.3"),
        (0, 0.1, 0.1, "no MNIST training rows (mnist_split == 0)"),
    ],
)
def test_split_sizes_refuse_an_empty_split(n, val, holdout, message):
    with pytest.raises(PipelineError, match=re.escape(message)):
        split_sizes(n, val, holdout)


def test_empty_split_error_suggests_a_fraction_that_works():
    with pytest.raises(PipelineError, match=r"at least 0\.005") as err:
        split_sizes(100, 0.001, 0.1)
    fraction = float(re.search(r"at least ([0-9.]+)", str(err.value)).group(1))
    assert split_sizes(100, fraction, 0.1)["val"] == 1


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_split_sizes_validate_fractions(bad):
    with pytest.raises(ValueError, match=r"split\.val_fraction must lie strictly between 0 and 1"):
        split_sizes(100, bad, 0.1)
    with pytest.raises(ValueError, match=r"split\.holdout_fraction must lie strictly between 0 and 1"):
        split_sizes(100, 0.1, bad)


# --- stratified_order ----------------------------------------------------------------------------


def test_stratified_order_is_a_seeded_permutation():
    y = np.random.default_rng(1).integers(0, 10, 500).astype(np.uint8)
    order = stratified_order(y, seed=3)
    assert sorted(order.tolist()) == list(range(500))
    np.testing.assert_array_equal(order, stratified_order(y, seed=3))
    assert not np.array_equal(order, stratified_order(y, seed=4))


def test_every_prefix_of_the_stratified_order_is_balanced():
    # unequal classes, one of them tiny
    y = np.repeat(np.arange(10), [50, 120, 7, 60, 60, 33, 90, 1, 45, 80]).astype(np.uint8)
    y = y[np.random.default_rng(0).permutation(len(y))]
    order = stratified_order(y, seed=0)
    counts = np.bincount(y, minlength=10)
    prefix_counts = np.cumsum(np.eye(10, dtype=int)[y[order]], axis=0)  # (n, classes)
    k = np.arange(1, len(y) + 1)[:, None]
    assert np.abs(prefix_counts - k * counts / len(y)).max() <= 1.0


# --- assignment by source ------------------------------------------------------------------------


def test_sources_are_not_split_and_test_is_mnist_test():
    ds = make_dataset()
    codes = row_splits(ds, cfg())
    per_source = source_codes(ds, codes)
    is_test = ds.mnist_split == MNIST_TEST
    assert (codes[is_test] == SPLITS.index("test")).all()
    assert (codes[~is_test] != SPLITS.index("test")).all()
    counts = np.bincount(list(per_source.values()), minlength=4)
    assert dict(zip(SPLITS, counts.tolist(), strict=True)) == {"train": 140, "val": 40, "holdout": 20, "test": 50}


def test_each_split_holds_every_class_in_proportion():
    ds = make_dataset(n_train=1000, n_test=100, angles=(0,))
    codes = row_splits(ds, cfg(val=0.15, holdout=0.05))
    train_y = ds.y[ds.mnist_split == MNIST_TRAIN]
    share = np.bincount(train_y, minlength=10) / len(train_y)
    for code, name in enumerate(SPLITS[:3]):
        got = np.bincount(ds.y[codes == code], minlength=10)
        # holdout is a prefix of the stratified order (within 1), val and train differences of two (within 2)
        assert np.abs(got - got.sum() * share).max() <= 2, name
        assert (got > 0).all(), name


def test_same_seed_same_split_other_seed_other_split():
    ds = make_dataset()
    a, b, c = row_splits(ds, cfg(seed=7)), row_splits(ds, cfg(seed=7)), row_splits(ds, cfg(seed=8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # same sizes, only which sources differs
    np.testing.assert_array_equal(np.bincount(a), np.bincount(c))


def test_the_split_does_not_depend_on_row_order():
    a, b = make_dataset(seed=0, shuffle=False), make_dataset(seed=0, shuffle=True)
    assert not np.array_equal(a.source_id, b.source_id)
    assert source_codes(a, row_splits(a, cfg())) == source_codes(b, row_splits(b, cfg()))


def test_the_holdout_does_not_move_when_val_fraction_changes():
    ds = make_dataset()
    holdout = SPLITS.index("holdout")
    a = row_splits(ds, cfg(val=0.1, holdout=0.1))
    b = row_splits(ds, cfg(val=0.3, holdout=0.1))
    np.testing.assert_array_equal(a == holdout, b == holdout)
    assert not np.array_equal(a, b)


def test_split_dataset_keeps_rows_whole_and_adds_up():
    ds = make_dataset()
    parts = split_dataset(ds, cfg())
    assert list(parts) == list(SPLITS)
    assert sum(len(p) for p in parts.values()) == len(ds)
    for name, part in parts.items():
        assert set(np.unique(part.angle).tolist()) == set(ANGLES), name
        # every row's pixels still belong to its source and angle
        np.testing.assert_array_equal(part.x[:, 0, 0], part.source_id % 251)
        np.testing.assert_array_equal(part.x[:, 0, 1], part.angle.astype(np.uint8))
    test_rows = ds.take(ds.mnist_split == MNIST_TEST)
    np.testing.assert_array_equal(parts["test"].source_id, test_rows.source_id)
    np.testing.assert_array_equal(parts["test"].angle, test_rows.angle)


# --- manifest ------------------------------------------------------------------------------------


def test_manifest_counts_equal_brute_force_counts():
    ds = make_dataset(n_train=120, n_test=30)
    codes = row_splits(ds, cfg())
    manifest = build_manifest(ds, codes)
    assert manifest["total"] == {"images": len(ds), "sources": 150}
    for code, name in enumerate(SPLITS):
        rows = codes == code
        entry = manifest[name]
        assert entry["images"] == rows.sum()
        assert entry["sources"] == len(np.unique(ds.source_id[rows]))
        assert entry["classes"] == {f"class_{c}": int((ds.y[rows] == c).sum()) for c in range(10)}
        assert list(entry["angles"]) == [f"angle_{a}" for a in sorted(ANGLES)]
        for a in ANGLES:
            expected = {f"class_{c}": int((rows & (ds.angle == a) & (ds.y == c)).sum()) for c in range(10)}
            assert entry["angles"][f"angle_{a}"] == expected
    assert sum(manifest[name]["images"] for name in SPLITS) == len(ds)


def test_manifest_rejects_codes_of_the_wrong_length():
    ds = make_dataset(n_train=20, n_test=10)
    with pytest.raises(ValueError, match="codes has 3 entries"):
        build_manifest(ds, np.zeros(3, np.int8))


# --- bad input -----------------------------------------------------------------------------------


def test_input_without_test_rows_is_an_error():
    ds = make_dataset()
    with pytest.raises(PipelineError, match=r"no MNIST test rows \(mnist_split == 1\); the 'test' split"):
        row_splits(ds.take(ds.mnist_split == MNIST_TRAIN), cfg())


def test_input_without_training_rows_is_an_error():
    ds = make_dataset()
    with pytest.raises(PipelineError, match=r"no MNIST training rows \(mnist_split == 0\)"):
        row_splits(ds.take(ds.mnist_split == MNIST_TEST), cfg())


def test_empty_input_is_an_error():
    ds = make_dataset()
    with pytest.raises(PipelineError, match="the augmented dataset is empty"):
        row_splits(ds.take(np.zeros(len(ds), bool)), cfg())


def test_too_small_fraction_names_the_split_and_the_fraction():
    ds = make_dataset(n_train=40, n_test=10)
    with pytest.raises(PipelineError, match=re.escape("split 'holdout' would be empty: split.holdout_fraction=0.01")):
        row_splits(ds, cfg(holdout=0.01))


@pytest.mark.parametrize("field", ["y", "mnist_split"])
def test_a_source_whose_rows_disagree_is_an_error(field):
    ds = make_dataset(shuffle=False)
    values = getattr(ds, field).copy()
    row = len(ds) - 1  # the last source at the last angle; its other rows keep their value
    values[row] = (values[row] + 1) % 2 if field == "mnist_split" else (values[row] + 1) % 10
    bad = dataclasses.replace(ds, **{field: values})
    name = "label" if field == "y" else "mnist_split"
    with pytest.raises(PipelineError, match=f"source image {int(ds.source_id[row])} has rows with different {name}s"):
        source_table(bad)


def test_an_unknown_mnist_split_value_is_an_error():
    ds = make_dataset()
    values = ds.mnist_split.copy()
    values[ds.source_id == 3] = 2
    with pytest.raises(PipelineError, match=r"mnist_split holds \[2\]; allowed are 0 \(MNIST train\) and 1"):
        source_table(dataclasses.replace(ds, mnist_split=values))
