"""The by-source samplers: every rotation of a source image stays on one side of any cut."""

from __future__ import annotations

import numpy as np
import pytest

from rotmnist.data import sources
from rotmnist.data.sources import source_folds, subsample_sources
from tests.support.datasets import digit_dataset


def test_subsample_sources_keeps_every_rotation_of_a_chosen_source():
    ds = digit_dataset(40, copies=7)
    sub = subsample_sources(ds, 0.25, seed=1)
    ids, counts = np.unique(sub.source_id, return_counts=True)
    assert len(ids) == 10 and set(counts) == {7}
    assert np.array_equal(subsample_sources(ds, 0.25, seed=1).source_id, sub.source_id)  # seeded
    assert subsample_sources(ds, 1.0, seed=1) is ds
    with pytest.raises(ValueError, match=r"fraction must lie in \(0, 1\]"):
        subsample_sources(ds, 0.0, seed=1)


def test_source_folds_partition_the_rows_by_source():
    ds = digit_dataset(30, copies=3)
    folds = source_folds(ds, 4, seed=0)
    assert len(folds) == 4
    val_rows = np.concatenate([v for _, v in folds])
    assert np.array_equal(np.sort(val_rows), np.arange(len(ds)))  # each row validates exactly once
    for fit_rows, val in folds:
        assert not set(ds.source_id[fit_rows]) & set(ds.source_id[val])
        assert len(fit_rows) + len(val) == len(ds)
    with pytest.raises(ValueError, match="need 2 <= k <= number of source images"):
        source_folds(ds, 31, seed=0)


@pytest.mark.parametrize(("pool", "n"), [(10, 35), (10, 10), (100, 7), (1, 5)])
def test_every_configuration_sees_exactly_the_budget_and_each_row_about_equally_often(pool, n):
    rows = sources.budget_rows(pool, n, seed=0)
    assert len(rows) == n
    counts = np.bincount(rows, minlength=pool)
    if n >= pool:  # cycled through: every row n // pool or one more times
        assert counts.max() - counts.min() <= 1
    else:  # sampled without repeats
        assert counts.max() == 1
    assert np.array_equal(rows, sources.budget_rows(pool, n, seed=0))
    assert not np.array_equal(sources.budget_rows(100, 50, seed=0), sources.budget_rows(100, 50, seed=1))


def test_the_pool_only_grows_with_replay_and_holds_the_newest_increment_without(splits):
    train, _ = splits
    pool = sources.Pool(train, seed=0)
    assert pool.add(50, (0,)) == 50
    seen: set[tuple[int, int]] = set()
    for angles in [(0,), (0, -30), (0, -30), (0, -30, 30)]:
        before = {(int(s), int(a)) for s, a in zip(pool.rows(True).source_id, pool.rows(True).angle, strict=True)}
        added = pool.add(40, angles)
        rows = pool.rows(replay=True)
        after = {(int(s), int(a)) for s, a in zip(rows.source_id, rows.angle, strict=True)}
        assert before < after and len(after) == len(before) + added == len(rows)
        newest = pool.rows(replay=False)
        assert len(newest) == added == 40 * len(angles)
        assert set(np.unique(newest.angle).tolist()) == set(angles)
        new = {(int(s), int(a)) for s, a in zip(newest.source_id, newest.angle, strict=True)}
        assert new == after - before and not new & seen
        seen |= new


def test_a_new_angle_starts_with_the_digits_the_pool_already_holds_upright(splits):
    pool = sources.Pool(splits[0], seed=3)
    pool.add(30, (0,))
    pool.add(10, (0, -30))
    rows = pool.rows(replay=True)
    upright_ids = set(rows.source_id[rows.angle == 0].tolist())
    rotated_ids = set(rows.source_id[rows.angle == -30].tolist())
    assert len(upright_ids) == 40 and len(rotated_ids) == 10 and rotated_ids < upright_ids


def test_a_capped_retraining_keeps_the_newest_increment_whole_and_samples_the_rest(splits):
    pool = sources.Pool(splits[0], seed=0)
    pool.add(100, (0,))
    pool.add(30, (0, -30))
    whole, newest = pool.rows(replay=True), pool.rows(replay=False)
    pairs = lambda ds: {(int(s), int(a)) for s, a in zip(ds.source_id, ds.angle, strict=True)}  # noqa: E731
    capped = pool.rows(replay=True, limit=100, seed=1)
    assert len(capped) == 100 and pairs(newest) < pairs(capped) < pairs(whole)
    assert pairs(capped) == pairs(pool.rows(replay=True, limit=100, seed=1))  # seeded
    assert pairs(capped) != pairs(pool.rows(replay=True, limit=100, seed=2))
    assert len(pool.rows(replay=True, limit=len(whole))) == len(whole)  # at or under the cap: the pool itself
    over = pool.rows(replay=False, limit=20, seed=0)  # the newest increment alone is over the cap: a sample of it
    assert len(over) == 20 and pairs(over) < pairs(newest)


def test_the_pool_runs_out_at_the_number_of_training_digits(splits):
    pool = sources.Pool(splits[0], seed=0)
    assert pool.add(10_000, (0, 10)) == 2 * 400
    assert pool.exhausted((0, 10)) and not pool.exhausted((0, 20))
    assert pool.add(5, (0,)) == 0
