"""Files written atomically (a temporary sibling, then a rename): any file, JSON and CSV; JSON read back.

A killed stage never leaves a half file that DVC would cache, and the next writer removes the temporary
siblings a killed one left behind.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rotmnist.errors import PipelineError


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


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write rows (dicts with the same keys, in column order) as CSV with a header, atomically.

    Values are quoted only where they need it (a comma, a quote, a line break); lines end in `\n`.
    """
    header = list(rows[0]) if rows else []
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([row[k] for k in header] for row in rows)
