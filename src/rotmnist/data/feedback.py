"""People's corrections as data: `data/feedback/{train,holdout}`, in the project's on-disk format plus three arrays.

A correction is an image the server scored (28x28 uint8, as the model saw it) and the digit a person
said it was. Each folder is a dataset (`rotmnist.data.dataset`) whose rows are corrections:

- `y` is the person's label; `angle` is 0 (the pipeline rotated nothing; the true tilt is unknown);
  `mnist_split` is `FEEDBACK` (2): not an MNIST image; `source_id` is -1, -2, ... one per request,
  so every correction is its own source (`EpochRows` takes each one every epoch);
- three more arrays: `request_id` (the server's id, 32 characters), `time` (when it was scored) and
  `corrected_at` (when the correction came), both UTC seconds since the epoch.

Rows are sorted by (time, request id), so the same corrections always give the same bytes. Which
folder a correction lands in depends on its request id alone (`is_held_out`): adding corrections or
exporting again never moves one across, and no held-out correction is ever trained on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from rotmnist.data.dataset import FEEDBACK, Dataset, load_dataset
from rotmnist.errors import PipelineError
from rotmnist.io import atomic_path
from rotmnist.spec import IMAGE_SHAPE

FOLDERS = ("train", "holdout")
ID_LENGTH = 32  # the server's request ids: 32 hexadecimal characters
_EXTRA = {"request_id": np.dtype(f"<U{ID_LENGTH}"), "time": np.dtype(np.float64), "corrected_at": np.dtype(np.float64)}


@dataclass(frozen=True)
class Corrections:
    """Corrected images (`data`, a Dataset) with their request ids and times, sorted by (time, request id)."""

    data: Dataset
    request_id: np.ndarray  # <U32 (n,)
    time: np.ndarray  # float64 (n,): when the request was scored
    corrected_at: np.ndarray  # float64 (n,): when the correction came

    def __post_init__(self) -> None:
        n = len(self.data)
        for name, dtype in _EXTRA.items():
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.shape != (n,):
                raise ValueError(f"Corrections.{name} must be a {dtype} array of {n} values")

    def __len__(self) -> int:
        return len(self.data)

    def take(self, index: np.ndarray) -> Corrections:
        return Corrections(self.data.take(index), *(getattr(self, k)[index] for k in _EXTRA))


def empty() -> Corrections:
    return corrections(np.zeros((0, *IMAGE_SHAPE), np.uint8), np.zeros(0, np.int64), [], np.zeros(0), np.zeros(0))


def corrections(
    images: np.ndarray, labels: np.ndarray, request_ids: list[str], times: np.ndarray, corrected_at: np.ndarray
) -> Corrections:
    """Corrections from parallel arrays (any order; duplicates of a request id keep the first), sorted.

    A ValueError names the first label outside 0-9, request id of the wrong form, or image of the wrong shape.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"corrected images must be uint8 (N, 28, 28), got {images.dtype} {images.shape}")
    labels = np.asarray(labels)
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if len(bad):
        raise ValueError(f"request {request_ids[bad[0]]}: label {labels[bad[0]]} is not a digit 0-9")
    wrong = [i for i in request_ids if len(i) != ID_LENGTH]
    if wrong:
        raise ValueError(f"request id {wrong[0]!r} is not {ID_LENGTH} characters long")
    ids = np.array(request_ids, dtype=_EXTRA["request_id"]).reshape(len(request_ids))
    _, first = np.unique(ids, return_index=True)
    times, corrected_at = np.asarray(times, np.float64), np.asarray(corrected_at, np.float64)
    keep = first[np.lexsort((ids[first], times[first]))]  # by time, then id
    n = len(keep)
    data = Dataset(
        x=np.ascontiguousarray(images[keep]),
        y=labels[keep].astype(np.uint8),
        source_id=-np.arange(1, n + 1, dtype=np.int32),
        angle=np.zeros(n, np.int8),
        mnist_split=np.full(n, FEEDBACK, np.int8),
    )
    return Corrections(data, ids[keep], times[keep], corrected_at[keep])


def merge(*parts: Corrections) -> Corrections:
    """All corrections of `parts`, one per request id (the earliest part's wins), sorted: what an export writes."""
    parts = tuple(p for p in parts if len(p)) or (empty(),)
    return corrections(
        np.concatenate([p.data.x for p in parts]),
        np.concatenate([p.data.y for p in parts]).astype(np.int64),
        [i for p in parts for i in p.request_id.tolist()],
        np.concatenate([p.time for p in parts]),
        np.concatenate([p.corrected_at for p in parts]),
    )


def is_held_out(request_id: np.ndarray, fraction: float) -> np.ndarray:
    """Whether each request's correction belongs to the held-out slice: its id's hash below `fraction`.

    The same id always lands on the same side, whatever else is exported with it.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must lie in [0, 1), got {fraction}")
    unit = [int.from_bytes(hashlib.sha256(i.encode()).digest()[:8], "big") / 2**64 for i in request_id.tolist()]
    return np.array(unit, np.float64) < fraction


def split(all_corrections: Corrections, fraction: float) -> dict[str, Corrections]:
    """{"train": ..., "holdout": ...}: the corrections divided by request id (`is_held_out`)."""
    held = is_held_out(all_corrections.request_id, fraction)
    return {"train": all_corrections.take(~held), "holdout": all_corrections.take(held)}


def save(c: Corrections, folder: str | Path) -> None:
    """Write `c` as a dataset folder plus request_id, time and corrected_at, atomically (all or nothing)."""
    with atomic_path(folder, is_dir=True) as tmp:
        arrays = {f.name: getattr(c.data, f.name) for f in fields(c.data)} | {k: getattr(c, k) for k in _EXTRA}
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)


def load(folder: str | Path) -> Corrections:
    """Read a folder written by `save`; no folder at all is no corrections; a PipelineError if it is broken."""
    folder = Path(folder)
    if not folder.exists():
        return empty()
    data = load_dataset(folder)
    extra = {}
    for name in _EXTRA:
        try:
            extra[name] = np.load(folder / f"{name}.npy", allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise PipelineError(f"{folder / name}.npy cannot be read ({err}); run `rotmnist feedback` again") from None
    try:
        return Corrections(data, **extra)
    except ValueError as err:
        raise PipelineError(f"{folder} is inconsistent: {err}; run `rotmnist feedback` again") from None


def newest(c: Corrections, cap: int) -> Corrections:
    """The `cap` most recent corrections (by `corrected_at`; 0 = all), in their stored order."""
    if cap == 0 or len(c) <= cap:
        return c
    order = np.lexsort((c.request_id, c.corrected_at))
    return c.take(np.sort(order[-cap:]))


def training_rows(folder: str | Path, cap: int) -> Dataset:
    """The corrections a model trains on: the newest `cap` of `folder` (data/feedback/train), as dataset rows."""
    return newest(load(folder), cap).data
