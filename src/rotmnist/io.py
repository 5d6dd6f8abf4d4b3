"""Atomic file writes and the on-disk dataset format shared by every stage.

A dataset is a folder of five `.npy` arrays of equal length N:

- `x`, uint8 (N, 28, 28): pixels 0-255
- `y`, uint8 (N,): digit label 0-9
- `source_id`, int32 (N,): index of the original MNIST image (0-69,999)
- `angle`, int8 (N,): rotation in degrees applied to the source (0 = upright)
- `mnist_split`, int8 (N,): 0 = MNIST training set, 1 = MNIST test set, 2 = a person's correction (data/feedback)

A few large arrays keep `dvc status` fast and load with one read (or mmap).
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from rotmnist.errors import PipelineError

IMAGE_SHAPE = (28, 28)
IMAGE_CHUNK = 8192  # images per vectorised step over a whole dataset, to bound temporary memory on the full 70k
N_CLASSES = 10  # digits 0-9
MNIST_TRAIN, MNIST_TEST, FEEDBACK = 0, 1, 2

_DTYPES = {
    "x": np.uint8,
    "y": np.uint8,
    "source_id": np.int32,
    "angle": np.int8,
    "mnist_split": np.int8,
}


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_siblings(target: Path) -> list[Path]:
    """Remove the temporary siblings of `target` (`.name.tmp-<pid>-*`, `.name.old-<pid>`) of dead processes.

    A killed writer leaves them behind (a SIGKILL runs no cleanup); they are never the output itself, so
    DVC never caches them, but a killed `augment` leaves hundreds of MB. Those of live processes stay.
    """
    removed = []
    for kind in ("tmp", "old"):
        for sibling in target.parent.glob(f".{glob.escape(target.name)}.{kind}-*"):
            pid = sibling.name.rsplit(f".{kind}-", 1)[1].split("-", 1)[0]
            if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
                continue
            if sibling.is_dir() and not sibling.is_symlink():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                sibling.unlink(missing_ok=True)
            removed.append(sibling)
    return removed


@contextlib.contextmanager
def atomic_path(target: str | Path, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; move it into place only if the block succeeds.

    The sibling's name carries this process's id, so a later writer removes what a killed one left.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(target)
    prefix = f".{target.name}.tmp-{os.getpid()}-"
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if is_dir:
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
            _replace_dir(tmp, target)
        else:
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _replace_dir(tmp: Path, target: Path) -> None:
    # A folder cannot be renamed over a non-empty one: move the old aside first.
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        os.replace(tmp, target)


def read_json(path: str | Path, *, made_by: str) -> Any:
    """JSON that stage `made_by` writes; a PipelineError naming the file (and the stage to run) if unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path} does not exist; run `rotmnist {made_by}` first") from None
    except (OSError, ValueError) as err:
        raise PipelineError(f"{path} is not valid JSON: {err}") from None


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def metrics_problems(data: Any, where: str = "") -> list[str]:
    """Why `dvc metrics show` could not show `data`: every value that is not a number, bool or string, by key path.

    DVC reads a metrics file as nested objects; it drops a null, a list or a non-finite number with a
    "failed to load some metrics" warning, and takes any key named `error` for its own load failure (hence
    `error_rate` in the slice metrics), so the pipeline writes none of them.
    """
    if isinstance(data, dict):
        named_error = [f"{where}.error" if where else "error"] if "error" in data else []
        return [f"{k}: DVC reads a key named 'error' as a failed load" for k in named_error] + [
            p for k, v in data.items() for p in metrics_problems(v, f"{where}.{k}" if where else str(k))
        ]
    if isinstance(data, bool | str) or (isinstance(data, int | float) and math.isfinite(data)):
        return []
    return [f"{where or '<top>'}: {data!r}"]


def rounded(value: Any) -> Any:
    """`value` with every float (also inside dicts) rounded to 6 decimals, for a readable metrics file."""
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return round(value, 6) if isinstance(value, float) else value


def write_metrics(path: str | Path, data: dict[str, Any]) -> None:
    """Write a DVC metrics file (JSON, atomically); ValueError naming the keys DVC could not show."""
    problems = metrics_problems(data) if isinstance(data, dict) else [f"<top>: {data!r} (not an object)"]
    if problems:
        raise ValueError(f"{path} would hold values DVC cannot show: {'; '.join(problems)}")
    write_json(path, data)


def write_report(
    report_path: str | Path,
    headline_path: str | Path,
    report: dict[str, Any],
    headline: Callable[[dict[str, Any]], dict[str, Any]],
    start: float,
) -> dict[str, Any]:
    """Write a stage's full report and the headline figures derived from it; return the report as written.

    The report gains `seconds`, the stage's wall time since `start` (`time.perf_counter()`); the headline is
    `headline(report)` less its keys without a value (DVC cannot show a null). It is checked before either file is
    written: one number, bool or string per key, so that `dvc metrics show` and `dvc exp show` stay one short row.
    """
    report = report | {"seconds": round(time.perf_counter() - start, 1)}
    figures = {k: v for k, v in headline(report).items() if v is not None}
    problems = [f"{k}: holds more than one value" for k, v in figures.items() if isinstance(v, dict)]
    problems += metrics_problems(figures)
    if problems:
        raise ValueError(f"{headline_path} would not be a flat row of values DVC can show: {'; '.join(problems)}")
    write_json(report_path, report)
    write_metrics(headline_path, figures)
    return report


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write rows (dicts with the same keys, in column order) as CSV with a header, atomically."""
    header = list(rows[0]) if rows else []
    lines = [",".join(header)] + [",".join(str(row[k]) for k in header) for row in rows]
    write_text(path, "\n".join(lines) + "\n")


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
