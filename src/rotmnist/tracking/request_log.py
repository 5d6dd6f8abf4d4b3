"""The request log of `rotmnist serve`: every image it scored, as the model saw it, and people's corrections.

One row per image: an id (returned to the client), the time (UTC, seconds since the epoch), the model's
name and version, the route, the source (`json`, `upload` or `page`), the image (28x28 uint8 after
preparation, 784 bytes), the predicted digit and the ten probabilities (40 bytes of little-endian
float32). A correction fills the row's `label` and `corrected_at`, once. The store is a SQLite file in
WAL mode (`Paths.request_log`) or, for several replicas, a PostgreSQL database (`serve.request_log`),
through SQLAlchemy Core.

Scoring never waits for the store: `record` appends to a bounded queue (`serve.log_queue` rows) and one
writer thread inserts whatever queued in one transaction. A full queue, or a store that is slow or
down, drops rows and counts them, with one warning per outage. The writer also applies the retention
(`serve.log_keep_rows`, `serve.log_keep_days`) when it starts and then every `PRUNE_SECONDS`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import sqlalchemy as sa

from rotmnist.errors import PipelineError, first_line
from rotmnist.spec import IMAGE_SHAPE
from rotmnist.tracking.locks import store_lock

if TYPE_CHECKING:
    from rotmnist.config import ServeConfig
    from rotmnist.paths import Paths

log = logging.getLogger(__name__)

SOURCES = ("json", "upload", "page")
PRUNE_SECONDS = 60.0  # how often the writer deletes rows beyond the retention
FEEDBACK_WAIT_SECONDS = 5.0  # how long a correction waits for its row to leave the queue
STOP_WAIT_SECONDS = 10.0  # how long stopping waits for the queued rows to be written
CONNECT_TIMEOUT_SECONDS = 5  # PostgreSQL: connecting, and each statement (x2)
LOCK_NAME = "rotmnist-request-log"
DAY = 86_400.0

_META = sa.MetaData()
TABLE = sa.Table(
    "request_log",
    _META,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(32), nullable=False, unique=True),
    sa.Column("time", sa.Float, nullable=False, index=True),  # UTC, seconds since the epoch
    sa.Column("model", sa.Text),
    sa.Column("version", sa.Text),
    sa.Column("route", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("image", sa.LargeBinary, nullable=False),  # 28x28 uint8, row by row
    sa.Column("digit", sa.SmallInteger, nullable=False),
    sa.Column("probabilities", sa.LargeBinary, nullable=False),  # 10 little-endian float32
    sa.Column("label", sa.SmallInteger),  # the digit a person said it was
    sa.Column("corrected_at", sa.Float),
)
_READ = [TABLE.c[name] for name in ("seq", "id", "time", "model", "version", "route", "source", "image", "digit")]
_READ += [TABLE.c.probabilities, TABLE.c.label, TABLE.c.corrected_at]


class LogUnavailable(Exception):
    """The store cannot be read or written now (down, full, locked), or a row is still waiting to be written."""


class Outcome(Enum):
    STORED = "stored"
    UNKNOWN = "unknown"  # no row has the id (never recorded, dropped, or deleted by the retention)
    CONFLICT = "conflict"  # the row was corrected before


@dataclass(frozen=True)
class Correction:
    """What `feedback` did; `label` is the stored one (for a conflict: the first correction's)."""

    outcome: Outcome
    label: int | None = None
    digit: int | None = None  # the predicted digit

    @property
    def disagrees(self) -> bool:
        return self.label != self.digit


@dataclass(frozen=True)
class Logged:
    """Rows of the log, oldest first: what a drift check or an export reads."""

    ids: list[str]
    times: np.ndarray  # float64 (n,): UTC, seconds since the epoch
    models: list[str | None]
    versions: list[str | None]
    routes: list[str]
    sources: list[str]
    images: np.ndarray  # uint8 (n, 28, 28)
    digits: np.ndarray  # int64 (n,): the predicted digits
    probabilities: np.ndarray  # float32 (n, 10)
    labels: np.ndarray  # int64 (n,): the corrections, -1 where there is none
    corrected_at: np.ndarray  # float64 (n,): when each correction came (UTC seconds), NaN where there is none


@dataclass(frozen=True)
class _Item:
    """One request's rows waiting for the writer."""

    ids: list[str]
    time: float
    model: str | None
    version: str | None
    route: str
    source: str
    x: np.ndarray  # float32 (n, 28, 28), pixels 0-255
    probs: np.ndarray  # (n, 10)


def store_url(settings: ServeConfig, paths: Paths) -> str:
    """The SQLAlchemy URL of `serve.request_log`: "" is SQLite at `Paths.request_log`; a PipelineError otherwise."""
    url = settings.request_log
    if not url:
        return f"sqlite:///{paths.request_log}"
    if url.lower().startswith(("postgresql://", "postgresql+", "sqlite:///")):
        return url
    shown = sa.engine.make_url(url).render_as_string(hide_password=True) if "://" in url else url
    raise PipelineError(
        f"serve.request_log must be empty (SQLite at serving/requests.db) or a postgresql:// URL, got {shown}"
    )


def _engine(url: str) -> sa.Engine:
    """An engine on `url`; SQLite connections use WAL, PostgreSQL ones give up on a server that does not answer."""
    if url.lower().startswith("sqlite"):
        engine = sa.create_engine(url)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    options = f"-c statement_timeout={2000 * CONNECT_TIMEOUT_SECONDS}"
    return sa.create_engine(url, connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS, "options": options})


def _sqlite_pragmas(connection, record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor the writer them
    cursor.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable up to the last checkpoint, much faster
    cursor.close()


class RequestLog:
    """The log's store, its bounded queue and its one writer thread, with counts a metrics route can read."""

    def __init__(
        self,
        url: str,
        keep_rows: int = 1_000_000,
        keep_days: float = 30.0,
        queue_rows: int = 10_000,
        prune_seconds: float = PRUNE_SECONDS,
    ):
        self.url, self.keep_rows, self.keep_days = url, keep_rows, keep_days
        self.queue_rows, self.prune_seconds = queue_rows, prune_seconds
        self.written = self.dropped = self.corrections = self.disagreements = 0
        self._engine = _engine(url)
        self._file = Path(self._engine.url.database) if self._engine.dialect.name == "sqlite" else None
        self._cond = threading.Condition()
        self._items: list[_Item] = []
        self._pending: set[str] = set()  # ids of the rows queued and not yet written or dropped
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._ready = False  # the table exists
        self._failing = False  # in an outage (warned once)
        self._next_prune = 0.0

    @classmethod
    def from_settings(cls, settings: ServeConfig, paths: Paths) -> RequestLog | None:
        """The log `serve` settings ask for, or None when `serve.log_requests` is false."""
        if not settings.log_requests:
            return None
        url = store_url(settings, paths)
        return cls(url, settings.log_keep_rows, settings.log_keep_days, settings.log_queue)

    @property
    def missing(self) -> bool:
        """Whether the log is a SQLite file that does not exist (nothing was ever recorded there)."""
        return self._file is not None and not self._file.exists()

    def describe(self) -> str:
        """Where rows go, for the server's log (no password)."""
        if self._file is not None:
            return f"SQLite {self._file} (WAL)"
        return self._engine.url.render_as_string(hide_password=True)

    def counts(self) -> dict[str, int]:
        """Rows written, dropped and waiting; corrections received, and those that disagree with the prediction."""
        with self._cond:
            return {
                "written": self.written,
                "dropped": self.dropped,
                "waiting": len(self._pending),
                "corrections": self.corrections,
                "disagreements": self.disagreements,
            }

    # ---- the request path --------------------------------------------------------------------------

    def record(
        self, x: np.ndarray, probs: np.ndarray, model: str | None, version: str | None, route: str, source: str
    ) -> list[str | None]:
        """Queue one row per image of `x` (float32 0-255) and its probabilities; their ids, None where dropped.

        Never blocks on the store and never raises: a request that does not fit in the queue is dropped whole.
        """
        n = len(x)
        raw = os.urandom(16 * n).hex()
        ids = [raw[32 * i : 32 * (i + 1)] for i in range(n)]
        with self._cond:
            if self._stopping or len(self._pending) + n > self.queue_rows:
                self.dropped += n
                return [None] * n
            self._items.append(_Item(ids, time.time(), model, version, route, source, x, probs))
            self._pending.update(ids)
            self._cond.notify()
        return [*ids]

    # ---- the writer thread -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (it creates the table on first use, then prunes)."""
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def stop(self, wait: float = STOP_WAIT_SECONDS) -> None:
        """Write what is queued (for at most `wait` seconds), stop the writer and close the store's connections."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(wait)
        self._engine.dispose()

    def flush(self, wait: float = STOP_WAIT_SECONDS) -> bool:
        """Wait until every queued row is written or dropped; False after `wait` seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, wait)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._stopping:
                    left = self._next_prune - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                items, self._items, stopping = self._items, [], self._stopping
            if items:
                self._write(items)
            elif stopping:
                return
            if not stopping and time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + self.prune_seconds
                self._prune_quietly()

    def _write(self, items: list[_Item]) -> None:
        """Insert `items` in one transaction; a store that fails loses them (counted), never the server."""
        n = sum(len(item.ids) for item in items)
        try:
            self._ensure_table()
            with self._engine.begin() as conn:
                conn.execute(TABLE.insert(), _rows(items))
        except Exception as err:  # any failure of the store (down, full, locked, read-only) drops these rows
            self._outage(err)
            written = 0
        else:
            if self._failing:
                log.info("the request log works again (%s)", self.describe())
                self._failing = False
            written = n
        with self._cond:
            self.written += written
            self.dropped += n - written
            for item in items:
                self._pending.difference_update(item.ids)
            self._cond.notify_all()

    def _outage(self, err: Exception) -> None:
        """Warn once per outage, not per row."""
        if not self._failing:
            log.warning(
                "the request log (%s) cannot be written (%s: %s); dropping rows until it can",
                self.describe(),
                type(err).__name__,
                first_line(err),
            )
            self._failing = True

    def _prune_quietly(self) -> None:
        try:
            deleted = self.prune()
        except Exception as err:  # the next write reports an outage; retention waits for the next round
            log.debug("request log retention skipped: %s", first_line(err))
            return
        if deleted:
            log.info("request log retention deleted %d rows", deleted)

    def _ensure_table(self) -> None:
        """Create the table once; replicas starting together on one store take turns (`store_lock`)."""
        if self._ready:
            return
        if self._file is not None:
            self._file.parent.mkdir(parents=True, exist_ok=True)
        with store_lock(self.url, LOCK_NAME):
            _META.create_all(self._engine)
        self._ready = True

    # ---- retention, corrections, readers -----------------------------------------------------------

    def prune(self, now: float | None = None) -> int:
        """Delete rows older than `keep_days` and all but the newest `keep_rows`; the number deleted."""
        now = time.time() if now is None else now
        self._ensure_table()
        newest = sa.select(TABLE.c.seq).order_by(TABLE.c.seq.desc()).offset(self.keep_rows).limit(1)
        with self._engine.begin() as conn:
            old = conn.execute(TABLE.delete().where(TABLE.c.time < now - self.keep_days * DAY)).rowcount
            beyond = conn.execute(TABLE.delete().where(TABLE.c.seq <= newest.scalar_subquery())).rowcount
        return old + beyond

    def feedback(self, id: str, label: int, wait: float = FEEDBACK_WAIT_SECONDS) -> Correction:
        """Store `label` as the digit the prediction `id` really was, once; a row still queued is written first.

        LogUnavailable when the store cannot be reached, or the row is still queued after `wait` seconds.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: id not in self._pending, wait):
                raise LogUnavailable("the prediction is not written yet")
        try:
            self._ensure_table()
            with self._engine.begin() as conn:
                done = _correct(conn, id, label)
        except Exception as err:  # the store is down, locked or broken: the client may retry
            log.warning("the request log cannot store a correction (%s: %s)", type(err).__name__, first_line(err))
            raise LogUnavailable("the request log cannot be reached") from None
        if done.outcome is Outcome.STORED:
            with self._cond:
                self.corrections += 1
                self.disagreements += int(done.disagrees)
        return done

    def recent(self, n: int) -> Logged:
        """The newest `n` rows (fewer if the log holds fewer), oldest first."""
        newest = sa.select(*_READ).order_by(TABLE.c.seq.desc()).limit(n).subquery()
        return self._read(sa.select(newest).order_by(newest.c.seq))

    def corrected(self, since: float = 0.0) -> Logged:
        """Every row a person corrected at `since` (UTC seconds) or later, oldest first: an export for retraining."""
        where = sa.and_(TABLE.c.label.is_not(None), TABLE.c.corrected_at >= since)
        return self._read(sa.select(*_READ).where(where).order_by(TABLE.c.seq))

    def _read(self, query: sa.Select) -> Logged:
        """The rows `query` selects; a PipelineError on one line when the store cannot be read."""
        try:
            self._ensure_table()
            with self._engine.connect() as conn:
                rows = conn.execute(query).all()
        except (sa.exc.SQLAlchemyError, OSError) as err:
            raise PipelineError(f"cannot read the request log ({self.describe()}): {first_line(err)}") from None
        return _logged(rows)


def _correct(conn: sa.Connection, id: str, label: int) -> Correction:
    """Set the label of the row `id` if it has none yet (one statement: two replicas cannot both store one)."""
    stored = (
        TABLE.update()
        .where(TABLE.c.id == id, TABLE.c.label.is_(None))
        .values(label=label, corrected_at=time.time())
        .returning(TABLE.c.digit)
    )
    digit = conn.execute(stored).scalar()
    if digit is not None:
        return Correction(Outcome.STORED, label, digit)
    row = conn.execute(sa.select(TABLE.c.label, TABLE.c.digit).where(TABLE.c.id == id)).first()
    return Correction(Outcome.UNKNOWN) if row is None else Correction(Outcome.CONFLICT, row.label, row.digit)


def _rows(items: Sequence[_Item]) -> list[dict]:
    """The table's rows for the queued `items`: images rounded to uint8, probabilities as float32 bytes."""
    rows = []
    for item in items:
        images = np.rint(item.x).astype(np.uint8)
        probs = np.ascontiguousarray(item.probs, dtype="<f4")
        digits = probs.argmax(axis=1).tolist()
        for i, id in enumerate(item.ids):
            rows.append(
                {
                    "id": id,
                    "time": item.time,
                    "model": item.model,
                    "version": item.version,
                    "route": item.route,
                    "source": item.source,
                    "image": images[i].tobytes(),
                    "digit": digits[i],
                    "probabilities": probs[i].tobytes(),
                }
            )
    return rows


def _logged(rows: Sequence[sa.Row]) -> Logged:
    """Rows read back as arrays."""
    n = len(rows)
    images = np.frombuffer(b"".join(r.image for r in rows), np.uint8).reshape(n, *IMAGE_SHAPE)
    probs = np.frombuffer(b"".join(r.probabilities for r in rows), "<f4").reshape(n, 10)
    return Logged(
        ids=[r.id for r in rows],
        times=np.array([r.time for r in rows], np.float64),
        models=[r.model for r in rows],
        versions=[r.version for r in rows],
        routes=[r.route for r in rows],
        sources=[r.source for r in rows],
        images=images.copy(),
        digits=np.array([r.digit for r in rows], np.int64),
        probabilities=probs.astype(np.float32),
        labels=np.array([-1 if r.label is None else r.label for r in rows], np.int64),
        corrected_at=np.array([np.nan if r.corrected_at is None else r.corrected_at for r in rows], np.float64),
    )
