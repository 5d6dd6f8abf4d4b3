"""The SQL store of the request log: its table, inserts, corrections, retention and reads.

One row per image: an id (returned to the client), the time (UTC, seconds since the epoch), the model's
name and version, the route, the source (`json`, `binary`, `upload` or `page`), the image (28x28 uint8 after
preparation, 784 bytes), the predicted digit and the ten probabilities (40 bytes of little-endian
float32). A correction fills the row's `label` and `corrected_at`, once. The store is a SQLite file in
WAL mode (`Paths.request_log`) or, for several replicas, a PostgreSQL database (`serve.request_log`),
through SQLAlchemy Core.

`RequestStore` alone is what readers open (`rotmnist drift`, the `feedback` stage): it starts no thread.
The server writes through `storage.request_log.RequestLog`, which queues rows off the request path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import sqlalchemy as sa

from rotmnist.errors import PipelineError, first_line
from rotmnist.spec import IMAGE_SHAPE, N_CLASSES
from rotmnist.storage.locks import store_lock
from rotmnist.storage.urls import is_postgres, redact

if TYPE_CHECKING:
    from rotmnist.config import ServeConfig
    from rotmnist.paths import Paths

log = logging.getLogger(__name__)

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
    """What a correction did; `label` is the stored one (for a conflict: the first correction's)."""

    outcome: Outcome
    label: int | None = None
    digit: int | None = None  # the predicted digit

    @property
    def disagrees(self) -> bool:
        return self.label != self.digit


@dataclass(frozen=True)
class Scored:
    """One request's scored images, as the server recorded them: the rows one insert writes."""

    ids: list[str]
    time: float
    model: str | None
    version: str | None
    route: str
    source: str
    x: np.ndarray  # float32 (n, 28, 28), pixels 0-255
    probs: np.ndarray  # (n, 10)


@dataclass(frozen=True)
class Logged:
    """Rows of the log, oldest first: what an input drift check or an export reads."""

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


def store_url(settings: ServeConfig, paths: Paths) -> str:
    """The SQLAlchemy URL of `serve.request_log`: "" is SQLite at `Paths.request_log`; a PipelineError otherwise."""
    url = settings.request_log
    if not url:
        return f"sqlite:///{paths.request_log}"
    if is_postgres(url) or url.lower().startswith("sqlite:///"):
        return url
    raise PipelineError(
        f"serve.request_log must be empty (SQLite at serving/requests.db) or a postgresql:// URL, got {redact(url)}"
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


class RequestStore:
    """The request log's table on one store: insert, correct, prune and read rows. Starts no thread.

    A context manager: leaving the block closes the store's connections.
    """

    def __init__(self, url: str):
        self.url = url
        self._engine = _engine(url)
        self._file = Path(self._engine.url.database) if self._engine.dialect.name == "sqlite" else None
        self._ready = False  # the table exists

    def __enter__(self) -> RequestStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the store's connections (a later call opens new ones)."""
        self._engine.dispose()

    @property
    def missing(self) -> bool:
        """Whether the log is a SQLite file that does not exist (nothing was ever recorded there)."""
        return self._file is not None and not self._file.exists()

    def describe(self) -> str:
        """Where rows go, for the server's log (no password)."""
        if self._file is not None:
            return f"SQLite {self._file} (WAL)"
        return redact(self.url)

    def ensure_table(self) -> None:
        """Create the table once; replicas starting together on one store take turns (`store_lock`)."""
        if self._ready:
            return
        if self._file is not None:
            self._file.parent.mkdir(parents=True, exist_ok=True)
        with store_lock(self.url, LOCK_NAME):
            _META.create_all(self._engine)
        self._ready = True

    def insert(self, batches: Sequence[Scored]) -> None:
        """Write the rows of `batches` in one transaction; raises what the store raises."""
        self.ensure_table()
        with self._engine.begin() as conn:
            conn.execute(TABLE.insert(), _rows(batches))

    def prune(self, keep_rows: int, keep_days: float, now: float | None = None) -> int:
        """Delete rows older than `keep_days` and all but the newest `keep_rows`; the number deleted."""
        now = time.time() if now is None else now
        self.ensure_table()
        newest = sa.select(TABLE.c.seq).order_by(TABLE.c.seq.desc()).offset(keep_rows).limit(1)
        with self._engine.begin() as conn:
            old = conn.execute(TABLE.delete().where(TABLE.c.time < now - keep_days * DAY)).rowcount
            beyond = conn.execute(TABLE.delete().where(TABLE.c.seq <= newest.scalar_subquery())).rowcount
        return old + beyond

    def correct(self, id: str, label: int) -> Correction:
        """Store `label` as the digit the prediction `id` really was, once; LogUnavailable when the store fails."""
        try:
            self.ensure_table()
            with self._engine.begin() as conn:
                return _correct(conn, id, label)
        except Exception as err:  # the store is down, locked or broken: the client may retry
            log.warning("the request log cannot store a correction (%s: %s)", type(err).__name__, first_line(err))
            raise LogUnavailable("the request log cannot be reached") from None

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
            self.ensure_table()
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


def _rows(batches: Sequence[Scored]) -> list[dict]:
    """The table's rows for `batches`: images rounded to uint8, probabilities as float32 bytes."""
    rows = []
    for batch in batches:
        images = np.rint(batch.x).astype(np.uint8)
        probs = np.ascontiguousarray(batch.probs, dtype="<f4")
        digits = probs.argmax(axis=1).tolist()
        for i, id in enumerate(batch.ids):
            rows.append(
                {
                    "id": id,
                    "time": batch.time,
                    "model": batch.model,
                    "version": batch.version,
                    "route": batch.route,
                    "source": batch.source,
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
    probs = np.frombuffer(b"".join(r.probabilities for r in rows), "<f4").reshape(n, N_CLASSES)
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
