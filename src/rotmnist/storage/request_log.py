"""The request log of `rotmnist serve`: every image it scored, written off the request path, and corrections.

Scoring never waits for the store (`storage.request_store.RequestStore`): `record` appends to a bounded
queue (`serve.log_queue` rows) and one writer thread inserts whatever queued in one transaction. A full
queue, or a store that is slow or down, drops rows and counts them, with one warning per outage. The
writer also applies the retention (`serve.log_keep_rows`, `serve.log_keep_days`) when it starts and
then every `PRUNE_SECONDS`. Readers open a `RequestStore` and start no writer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from rotmnist.config import ServeConfig
from rotmnist.errors import first_line
from rotmnist.storage.request_store import Correction, LogUnavailable, Outcome, RequestStore, Scored, store_url

if TYPE_CHECKING:
    from rotmnist.paths import Paths

log = logging.getLogger(__name__)

PRUNE_SECONDS = 60.0  # how often the writer deletes rows beyond the retention
# How long the writer lets rows gather before it writes them: one transaction for the rows of many requests
# rather than one per request (a single-image request's own transaction cost it 0.29 ms of the server's time,
# gathered 0.07 ms or less), at the price of a correction of a row not written yet waiting this long.
GATHER_SECONDS = 0.02
# How long a correction of an id the store does not know waits for another replica's writer to write it.
ELSEWHERE_SECONDS = 0.5
ID_BYTES = 16  # an id's random bytes: 32 hex characters, as the table's id column holds
ID_POOL = 4096  # ids drawn from the system's randomness at once
FEEDBACK_WAIT_SECONDS = 5.0  # how long a correction waits for its row to leave the queue
STOP_WAIT_SECONDS = 10.0  # how long stopping waits for the queued rows to be written


class RequestLog:
    """A store, its bounded queue and its one writer thread, with counts a metrics route can read."""

    def __init__(
        self,
        store: RequestStore,
        keep_rows: int,
        keep_days: float,
        queue_rows: int,
        prune_seconds: float = PRUNE_SECONDS,
        gather_seconds: float = GATHER_SECONDS,
        elsewhere_seconds: float = ELSEWHERE_SECONDS,
    ):
        self.store, self.keep_rows, self.keep_days = store, keep_rows, keep_days
        self.queue_rows, self.prune_seconds = queue_rows, prune_seconds
        self.gather_seconds, self.elsewhere_seconds = gather_seconds, elsewhere_seconds
        self.written = self.dropped = self.corrections = self.disagreements = 0
        self._cond = threading.Condition()
        self._items: list[Scored] = []
        self._pending: set[str] = set()  # ids of the rows queued and not yet written or dropped
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._failing = False  # in an outage (warned once)
        self._next_prune = 0.0
        self._random, self._used = b"", 0  # random bytes for ids, and how many of them are used

    @classmethod
    def open(cls, url: str, settings: ServeConfig | None = None, prune_seconds: float = PRUNE_SECONDS) -> RequestLog:
        """A log on the store at `url`, with the retention and queue of `settings` (default: `serve`'s defaults)."""
        settings = settings or ServeConfig()
        return cls(RequestStore(url), settings.log_keep_rows, settings.log_keep_days, settings.log_queue, prune_seconds)

    @classmethod
    def from_settings(cls, settings: ServeConfig, paths: Paths) -> RequestLog | None:
        """The log `serve` settings ask for, or None when `serve.log_requests` is false."""
        if not settings.log_requests:
            return None
        return cls.open(store_url(settings, paths), settings)

    def describe(self) -> str:
        """Where rows go, for the server's log (no password)."""
        return self.store.describe()

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
        with self._cond:
            if self._stopping or len(self._pending) + n > self.queue_rows:
                self.dropped += n
                return [None] * n
            ids = self._new_ids(n)
            self._items.append(Scored(ids, time.time(), model, version, route, source, x, probs))
            self._pending.update(ids)
            self._cond.notify()
        return [*ids]

    def _new_ids(self, n: int) -> list[str]:
        """`n` unguessable ids (128 random bits in hex each) from the pool of the system's random bytes, which
        is refilled `ID_POOL` ids at a time: one system call per thousands of requests, not one per request."""
        need = ID_BYTES * n
        if len(self._random) - self._used < need:
            self._random, self._used = os.urandom(max(need, ID_BYTES * ID_POOL)), 0
        raw = self._random[self._used : self._used + need].hex()
        self._used += need
        return [raw[2 * ID_BYTES * i : 2 * ID_BYTES * (i + 1)] for i in range(n)]

    def feedback(self, id: str, label: int, wait: float = FEEDBACK_WAIT_SECONDS) -> Correction:
        """Store `label` as the digit the prediction `id` really was, once; a row still queued is written first.

        An id the store does not know yet is asked again for `ELSEWHERE_SECONDS`: replicas sharing one
        PostgreSQL log each gather their rows before writing, so a prediction scored by another replica
        a moment ago may still be on its way. LogUnavailable when the store cannot be reached, or the row
        is still queued here after `wait` seconds.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: id not in self._pending, wait):
                raise LogUnavailable("the prediction is not written yet")
        done = self.store.correct(id, label)
        deadline = time.monotonic() + self.elsewhere_seconds
        while done.outcome is Outcome.UNKNOWN and time.monotonic() < deadline:
            time.sleep(0.05)
            done = self.store.correct(id, label)
        if done.outcome is Outcome.STORED:
            with self._cond:
                self.corrections += 1
                self.disagreements += int(done.disagrees)
        return done

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
        self.store.close()

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
                gather = self._items and not self._stopping and self.gather_seconds > 0
            if gather:  # let the next requests' rows join this transaction
                time.sleep(self.gather_seconds)
            with self._cond:
                items, self._items, stopping = self._items, [], self._stopping
            if items:
                self._write(items)
            elif stopping:
                return
            if not stopping and time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + self.prune_seconds
                self._prune_quietly()

    def _write(self, items: list[Scored]) -> None:
        """Insert `items` in one transaction; a store that fails loses them (counted), never the server."""
        n = sum(len(item.ids) for item in items)
        try:
            self.store.insert(items)
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
            deleted = self.store.prune(self.keep_rows, self.keep_days)
        except Exception as err:  # the next write reports an outage; retention waits for the next round
            log.debug("request log retention skipped: %s", first_line(err))
            return
        if deleted:
            log.info("request log retention deleted %d rows", deleted)
