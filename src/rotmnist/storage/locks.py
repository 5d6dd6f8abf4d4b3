"""A lock that processes sharing a store hold while they touch it first: making its tables, a study's parent run.

Workers started together on an empty database would each try to create MLflow's or Optuna's tables, and
one of them would hit a unique key. `store_lock` makes them take turns: on PostgreSQL a session advisory
lock (released by the server if the process dies), on a file store (SQLite, an Optuna journal) a
`filelock.FileLock` (an `flock`) on a sibling `<file>.init-lock`. A tracking server serialises its own
writes: no lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import filelock

from rotmnist.errors import PipelineError, first_line
from rotmnist.storage.urls import is_postgres, redact

WAIT_SECONDS = 300.0  # a holder does seconds of work; waiting longer means a stuck process
POLL_SECONDS = 0.05
LOCK_SUFFIX = ".init-lock"


def lock_key(name: str) -> int:
    """The signed 64-bit key of an advisory lock named `name` (the same in every process)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def file_of(url: str) -> Path | None:
    """The file behind a SQLite URL (`sqlite:///path`), a journal (`journal:path`) or a plain path; else None."""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:")).expanduser()
    if "://" not in url and url:
        return Path(url).expanduser()
    return None


@contextlib.contextmanager
def store_lock(url: str, name: str, wait: float = WAIT_SECONDS) -> Iterator[None]:
    """Hold the lock `name` of the store at `url` while the block runs; a PipelineError after `wait` seconds.

    PostgreSQL URLs take the advisory lock `name` on a connection of their own. A file store has one lock,
    whatever the name (do not nest two on one file): an exclusive `flock`. Anything else (a tracking
    server) runs the block unlocked.
    """
    if is_postgres(url):
        with _advisory_lock(url, name, wait):
            yield
        return
    path = file_of(url)
    if path is None:
        yield
        return
    with _file_lock(path.with_name(path.name + LOCK_SUFFIX), name, wait):
        yield


@contextlib.contextmanager
def _advisory_lock(url: str, name: str, wait: float) -> Iterator[None]:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        try:
            conn = engine.connect()
        except sqlalchemy.exc.SQLAlchemyError as err:  # server down, no such database, bad password
            raise PipelineError(
                f"cannot reach the database {redact(url)} ({type(err).__name__}: {first_line(err)}); check that it is "
                "running and its URL (tune.storage, mlflow.tracking_uri, serve.request_log or their environment "
                "variables)"
            ) from None
        with conn:
            key, try_lock = {"key": lock_key(name)}, sqlalchemy.text("SELECT pg_try_advisory_lock(:key)")
            _wait_for(lambda: conn.execute(try_lock, key).scalar(), name, wait)
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), key)
                conn.commit()
    finally:
        engine.dispose()


@contextlib.contextmanager
def _file_lock(path: Path, name: str, wait: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(path, poll_interval=POLL_SECONDS)
    try:
        lock.acquire(timeout=wait)
    except filelock.Timeout:
        raise PipelineError(_held_too_long(name, wait)) from None
    try:
        yield
    finally:
        lock.release()


def _wait_for(take, name: str, wait: float) -> None:
    """Call `take` until it returns True; a PipelineError naming the lock after `wait` seconds."""
    deadline = time.monotonic() + wait
    while not take():
        if time.monotonic() > deadline:
            raise PipelineError(_held_too_long(name, wait))
        time.sleep(POLL_SECONDS)


def _held_too_long(name: str, wait: float) -> str:
    return f"waited {wait:.0f} s for the lock {name!r} that another process holds; is a worker stuck?"
