"""Sampling by source image: every rotation of a digit goes where its source goes, so no rotation leaks.

The one home of by-source sampling. `choose_sources` draws the seeded sources; the sweep's subsets
and folds, `learn_model`'s validation split, the curriculum's monitor sample and pool, and the
comparison's training budget are built from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rotmnist.data.dataset import Dataset
from rotmnist.errors import PipelineError

if TYPE_CHECKING:
    from rotmnist.config import TuneConfig


def choose_sources(source_id: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded choice of `n` distinct source ids among those in `source_id` (all of them if there are fewer)."""
    sources = np.unique(source_id)
    return np.random.default_rng(seed).choice(sources, size=min(n, len(sources)), replace=False)


def sample_sources(ds: Dataset, n: int, seed: int) -> Dataset:
    """The rows (all rotations) of `n` seeded source images of `ds`."""
    return ds.take(np.isin(ds.source_id, choose_sources(ds.source_id, n, seed)))


def subsample_sources(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """The rows of a seeded `fraction` of the source images (all rotations of a source stay together)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    if fraction == 1:
        return ds
    return sample_sources(ds, max(1, round(len(np.unique(ds.source_id)) * fraction)), seed)


def holdout_sources(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split `ds` into (train, validation) by source image: a seeded `fraction` of the sources validates."""
    n_sources = len(np.unique(ds.source_id))
    n_val = round(n_sources * fraction)
    if not 1 <= n_val < n_sources:
        raise ValueError(f"cannot hold out {fraction:g} of {n_sources} source images for validation")
    is_val = np.isin(ds.source_id, choose_sources(ds.source_id, n_val, seed))
    return ds.take(~is_val), ds.take(is_val)


def source_folds(ds: Dataset, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train rows, validation rows) pairs; folds are made of whole source images, so rotations never leak."""
    sources = np.unique(ds.source_id)
    if k < 2 or k > len(sources):
        raise ValueError(f"need 2 <= k <= number of source images ({len(sources)}), got k={k}")
    fold_of = dict(zip(np.random.default_rng(seed).permutation(sources), np.arange(len(sources)) % k, strict=True))
    fold = np.vectorize(fold_of.__getitem__, otypes=[np.int64])(ds.source_id)
    return [(np.flatnonzero(fold != i), np.flatnonzero(fold == i)) for i in range(k)]


def make_folds(train: Dataset, val: Dataset | None, cv_folds: int, seed: int) -> list[tuple[Dataset, Dataset]]:
    """(train, validation) pairs: the given split when cv_folds == 1, else k folds of `train` by source image."""
    if cv_folds == 1:
        if val is None or len(val) == 0:
            raise PipelineError("the sweep needs a non-empty validation set (or tune.cv_folds > 1)")
        return [(train, val)]
    return [(train.take(a), train.take(b)) for a, b in source_folds(train, cv_folds, seed)]


def sweep_subsets(train: Dataset, val: Dataset | None, cfg: TuneConfig) -> tuple[Dataset, Dataset | None]:
    """The sweep's data: `train_fraction` of train's source images, `val_fraction` of val's (by source, seeded)."""
    if len(train) == 0:
        raise PipelineError("the sweep's training set is empty")
    train = subsample_sources(train, cfg.train_fraction, cfg.seed)
    if val is not None and cfg.cv_folds == 1:
        val = subsample_sources(val, cfg.val_fraction, cfg.seed)
    return train, (val if cfg.cv_folds == 1 else None)


def budget_rows(n_pool: int, n: int, seed: int) -> np.ndarray:
    """Exactly `n` row indices into a pool of `n_pool`: whole seeded permutations, then the start of one more.

    So every configuration sees the same number of images whatever the size of its data: a small pool is
    cycled through (each row used n // n_pool or one more times), a large one is sampled without repeats.
    """
    if n_pool < 1 or n < 1:
        raise ValueError(f"need a non-empty pool and budget, got pool {n_pool}, budget {n}")
    rng = np.random.default_rng(seed)
    rounds = -(-n // n_pool)
    return np.concatenate([rng.permutation(n_pool) for _ in range(rounds)])[:n]


class Pool:
    """The training data in the pool: per angle, a prefix of one seeded order of the training digits.

    An increment of n digits at some angles takes, at each of them, the next n digits not yet in the pool
    at that angle; so a newly arrived angle starts with the rotations of digits the model may know upright.
    """

    def __init__(self, train: Dataset, seed: int):
        if len(train) == 0:
            raise PipelineError("the train split is empty; check the split stage")
        sources = np.unique(train.source_id)  # sorted
        rank = np.empty(len(sources), np.int64)
        rank[np.random.default_rng(seed).permutation(len(sources))] = np.arange(len(sources))
        self.train = train
        self.n_sources = len(sources)
        self.position = rank[np.searchsorted(sources, train.source_id)]  # each row's digit's place in the order
        self.taken: dict[int, int] = {}  # angle -> digits in the pool at that angle
        self.newest: dict[int, tuple[int, int]] = {}  # angle -> the digit range the latest increment added

    def exhausted(self, angles: tuple[int, ...]) -> bool:
        """Whether every training digit is already in the pool at each of `angles`."""
        return all(self.taken.get(a, 0) >= self.n_sources for a in angles)

    def _mask(self, ranges: dict[int, tuple[int, int]]) -> np.ndarray:
        mask = np.zeros(len(self.train), bool)
        for angle, (lo, hi) in ranges.items():
            mask |= (self.train.angle == angle) & (self.position >= lo) & (self.position < hi)
        return mask

    def add(self, n: int, angles: tuple[int, ...]) -> int:
        """Add the next `n` digits at each of `angles` (fewer where the data runs out); return the images added."""
        self.newest = {}
        for a in angles:
            lo = self.taken.get(a, 0)
            hi = min(lo + n, self.n_sources)
            if hi > lo:
                self.newest[a], self.taken[a] = (lo, hi), hi
        return int(self._mask(self.newest).sum())

    def rows(self, replay: bool, limit: int = 0, seed: int = 0) -> Dataset:
        """The training set: the whole pool (replay) or the newest increment only, at most `limit` images.

        Over the limit, the newest increment is kept whole (it is what the monitor flagged) and the rest is a
        seeded sample of the older pool; if the newest increment alone is over it, a sample of that.
        """
        newest = self._mask(self.newest)
        pool = self._mask({a: (0, hi) for a, hi in self.taken.items()}) if replay else newest
        if 0 < limit < pool.sum():
            rng = np.random.default_rng(seed)
            new_rows, old_rows = np.flatnonzero(newest), np.flatnonzero(pool & ~newest)
            if len(new_rows) >= limit:
                keep = rng.choice(new_rows, size=limit, replace=False)
            else:
                keep = np.concatenate([new_rows, rng.choice(old_rows, size=limit - len(new_rows), replace=False)])
            pool = np.zeros_like(pool)
            pool[keep] = True
        return self.train.take(pool)
