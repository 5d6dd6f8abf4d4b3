"""The on-disk dataset format shared by every stage, with its reader and writer.

A dataset is a folder of five `.npy` arrays of equal length N:

- `x`, uint8 (N, 28, 28): pixels 0-255
- `y`, uint8 (N,): digit label 0-9
- `source_id`, int32 (N,): index of the original MNIST image (0-69,999)
- `angle`, int8 (N,): rotation in degrees applied to the source (0 = upright)
- `mnist_split`, int8 (N,): 0 = MNIST training set, 1 = MNIST test set, 2 = a person's correction (data/feedback)

A few large arrays keep `dvc status` fast and load with one read (or mmap).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from rotmnist.errors import PipelineError
from rotmnist.io import atomic_path
from rotmnist.spec import IMAGE_SHAPE

IMAGE_CHUNK = 8192  # images per vectorised step over a whole dataset, to bound temporary memory on the full 70k
MNIST_TRAIN, MNIST_TEST, FEEDBACK = 0, 1, 2  # the values of `mnist_split`

_DTYPES = {
    "x": np.uint8,
    "y": np.uint8,
    "source_id": np.int32,
    "angle": np.int8,
    "mnist_split": np.int8,
}


@dataclass(frozen=True)
class Dataset:
    """Images with their label, source image, rotation angle and MNIST split."""

    x: np.ndarray
    y: np.ndarray
    source_id: np.ndarray
    angle: np.ndarray
    mnist_split: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.x)
        for f in fields(self):
            arr = getattr(self, f.name)
            if not isinstance(arr, np.ndarray):
                raise TypeError(f"Dataset.{f.name} must be a numpy array, got {type(arr).__name__}")
            if arr.dtype != _DTYPES[f.name]:
                raise TypeError(f"Dataset.{f.name} must have dtype {np.dtype(_DTYPES[f.name])}, got {arr.dtype}")
            if len(arr) != n:
                raise ValueError(f"Dataset.{f.name} has {len(arr)} rows, x has {n}")
        if self.x.shape[1:] != IMAGE_SHAPE:
            raise ValueError(f"Dataset.x must have shape (N, 28, 28), got {self.x.shape}")
        for name in ("y", "source_id", "angle", "mnist_split"):
            if getattr(self, name).ndim != 1:
                raise ValueError(f"Dataset.{name} must be one-dimensional")

    def __len__(self) -> int:
        return len(self.x)

    def take(self, index: np.ndarray) -> Dataset:
        """The rows selected by an index or boolean mask."""
        return Dataset(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(parts: list[Dataset]) -> Dataset:
        """Rows of `parts`, in order."""
        if not parts:
            raise ValueError("cannot concatenate an empty list of datasets")
        return Dataset(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Dataset)})


def save_dataset(ds: Dataset, folder: str | Path) -> None:
    """Write `ds` as a folder of `.npy` arrays, atomically (all or nothing)."""
    with atomic_path(folder, is_dir=True) as tmp:
        for f in fields(ds):
            np.save(tmp / f"{f.name}.npy", np.ascontiguousarray(getattr(ds, f.name)), allow_pickle=False)


def load_dataset(folder: str | Path, *, mmap: bool = False) -> Dataset:
    """Read a dataset folder written by `save_dataset`; a clear error if it is incomplete."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError(f"dataset folder {folder} does not exist; run the stage that writes it (dvc repro)")
    arrays = {}
    for name in _DTYPES:
        path = folder / f"{name}.npy"
        if not path.is_file():
            raise PipelineError(f"dataset folder {folder} lacks {name}.npy; run the stage that writes it again")
        try:
            arrays[name] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise PipelineError(
                f"{path} is not a valid .npy array ({err}); run the stage that writes it again"
            ) from None
    try:
        return Dataset(**arrays)
    except (TypeError, ValueError) as err:
        raise PipelineError(
            f"dataset folder {folder} is inconsistent: {err}; run the stage that writes it again"
        ) from None
