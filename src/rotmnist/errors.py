"""The package's one error family: what a user can fix. The CLI prints its message on one line.

`PipelineError` is raised for every expected failure (a missing or corrupt stage output, a bad data
file, an unreachable or deleted MLflow store, a diverging loss, an unusable device); `ConfigError`,
its subclass, for an invalid `params.yaml` (the CLI exits 2 for it, 1 for the rest). `retry` repeats
an action through the transient errors of stores that several processes write at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class PipelineError(Exception):
    """Bad or missing input to a stage, or a store it cannot use; the message says what to do."""


class ConfigError(PipelineError, ValueError):
    """`params.yaml` is missing, unreadable, or holds an invalid value."""


def first_line(err: BaseException, limit: int | None = 300) -> str:
    """The first line of an exception's message (at most `limit` characters): enough to name the cause on one line."""
    return (str(err).strip().splitlines() or [""])[0][:limit]


def retry(action: Callable[[], T], on: type[Exception], attempts: int, pause: float) -> T:
    """Call `action` up to `attempts` times while it raises `on`; return its first result.

    Waits `pause`, then 2 x `pause`, ... between tries. The last try's failure propagates, and any other
    exception at once.
    """
    for attempt in range(1, attempts):
        try:
            return action()
        except on:
            time.sleep(pause * attempt)
    return action()
