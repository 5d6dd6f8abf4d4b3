"""The request log on real SQLite files: the writer, the bounded queue, retention, corrections, a broken store."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from rotmnist.config import ServeConfig
from rotmnist.errors import PipelineError
from rotmnist.paths import Paths
from rotmnist.storage.request_log import RequestLog
from rotmnist.storage.request_store import DAY, LogUnavailable, Outcome, RequestStore, store_url

RNG = np.random.default_rng(0)


def batch(n: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` images of float pixels 0-255 (as a JSON batch may hold) and their probabilities."""
    x = RNG.uniform(0, 255, (n, 28, 28)).astype(np.float32)
    return x, RNG.dirichlet(np.ones(10), n).astype(np.float32)


def record(log: RequestLog, n: int = 1, source: str = "json") -> list[str | None]:
    return log.record(*batch(n), "digits", "3", "/score", source)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "serving" / "requests.db"


@pytest.fixture
def running(db: Path):
    """A started log on a new SQLite file; stopped afterwards."""
    log = RequestLog.open(f"sqlite:///{db}")
    log.start()
    yield log
    log.stop()


def test_rows_round_trip_images_as_uint8_and_probabilities_exactly(running, db):
    x, probs = batch(3)
    ids = running.record(x, probs, "digits", "3", "/invocations", "upload")
    assert running.flush()
    rows = running.store.recent(10)
    assert rows.ids == ids and len(set(ids)) == 3 and all(len(i) == 32 for i in ids)
    assert rows.images.dtype == np.uint8 and rows.images.shape == (3, 28, 28)
    assert np.array_equal(rows.images, np.rint(x).astype(np.uint8))
    assert np.array_equal(rows.probabilities, probs)
    assert rows.digits.tolist() == probs.argmax(1).tolist() and rows.labels.tolist() == [-1] * 3
    assert rows.models == ["digits"] * 3 and rows.versions == ["3"] * 3
    assert rows.routes == ["/invocations"] * 3 and rows.sources == ["upload"] * 3
    assert np.all(np.abs(rows.times - time.time()) < 60)
    assert running.counts() == {"written": 3, "dropped": 0, "waiting": 0, "corrections": 0, "disagreements": 0}
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_rows_that_arrive_while_the_writer_gathers_share_one_transaction(db, monkeypatch):
    log = RequestLog.open(f"sqlite:///{db}")
    log.gather_seconds = 0.5
    inserts = []
    insert = log.store.insert
    monkeypatch.setattr(log.store, "insert", lambda items: (inserts.append(len(items)), insert(items)))
    log.start()
    try:
        record(log)
        time.sleep(0.1)  # the writer woke for the first request and gathers for 0.5 s
        for _ in range(4):
            record(log, 2)
        assert log.flush()
    finally:
        log.stop()
    assert inserts == [5] and log.counts()["written"] == 9


def test_a_correction_through_another_replica_waits_for_the_row_it_is_still_gathering(db):
    scoring, correcting = RequestLog.open(f"sqlite:///{db}"), RequestLog.open(f"sqlite:///{db}")
    scoring.gather_seconds = 0.3
    correcting.elsewhere_seconds = 2.0
    scoring.start()
    try:
        [id] = record(scoring)
        start = time.monotonic()
        assert correcting.feedback(id, 4).outcome is Outcome.STORED  # written by the other replica meanwhile
        assert time.monotonic() - start >= 0.2
        correcting.elsewhere_seconds = 0.2
        start = time.monotonic()
        assert correcting.feedback("f" * 32, 4).outcome is Outcome.UNKNOWN  # never recorded: after the wait
        assert 0.2 <= time.monotonic() - start < 2.0
    finally:
        scoring.stop()
        correcting.stop()


def test_ids_are_unique_32_hex_characters_across_refills_of_the_random_pool(db, monkeypatch):
    monkeypatch.setattr("rotmnist.storage.request_log.ID_POOL", 5)
    log = RequestLog.open(f"sqlite:///{db}")
    ids = [i for n in (1, 3, 2, 7, 1, 4) for i in record(log, n)]
    assert len(set(ids)) == len(ids) == 18
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    log.stop()


def test_recent_gives_the_newest_rows_oldest_first(running):
    ids = [i for _ in range(4) for i in record(running, 2)]
    assert running.flush()
    assert running.store.recent(3).ids == ids[-3:]
    assert running.store.recent(100).ids == ids


def test_a_full_queue_drops_whole_requests_and_counts_them(db):
    log = RequestLog.open(f"sqlite:///{db}", ServeConfig(log_queue=5))  # no writer yet: rows wait
    first = record(log, 3)
    assert record(log, 3) == [None] * 3  # 6 > 5: the request is dropped whole
    last = record(log, 2)
    assert None not in first + last
    assert log.counts() == {"written": 0, "dropped": 3, "waiting": 5, "corrections": 0, "disagreements": 0}
    log.start()
    assert log.flush()
    assert log.store.recent(10).ids == first + last
    log.stop()
    assert log.counts()["written"] == 5 and record(log) == [None]  # a stopped log records nothing


def test_stop_writes_what_is_still_queued(db):
    log = RequestLog.open(f"sqlite:///{db}")
    log.start()
    ids = [i for _ in range(20) for i in record(log, 5)]
    log.stop()
    assert RequestStore(f"sqlite:///{db}").recent(1000).ids == ids


def test_retention_keeps_the_newest_rows(running):
    ids = [i for _ in range(5) for i in record(running, 2)]
    running.flush()
    assert running.store.prune(keep_rows=4, keep_days=running.keep_days) == 6
    assert running.store.recent(100).ids == ids[-4:]
    assert running.store.prune(keep_rows=4, keep_days=running.keep_days) == 0


def test_retention_deletes_rows_older_than_keep_days(running):
    old = record(running)
    running.flush()
    then = running.store.recent(1).times[0]
    while time.time() < then + 0.02:  # the next rows are stamped later than `then` by more than the margin below
        time.sleep(0.005)
    new = record(running, 2)
    running.flush()
    keep_days = running.keep_days
    assert running.store.prune(running.keep_rows, keep_days, now=then + keep_days * DAY + 0.01) == 1  # just over
    assert running.store.recent(100).ids == new and old[0] not in new


def test_the_writer_applies_the_retention_by_itself(db):
    log = RequestLog.open(f"sqlite:///{db}", ServeConfig(log_keep_rows=2), prune_seconds=0.05)
    log.start()
    ids = record(log, 5)
    assert log.flush()  # written first: an empty log would end the wait below at once
    deadline = time.monotonic() + 10
    while len(log.store.recent(100).ids) > 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert log.store.recent(100).ids == ids[-2:]
    log.stop()


def test_a_prediction_takes_one_correction_and_unknown_ids_are_told_apart(running):
    x, probs = batch(2)
    a, b = running.record(x, probs, "digits", "3", "/score", "page")
    predicted = probs.argmax(1).tolist()
    wrong = (predicted[0] + 1) % 10
    done = running.feedback(a, wrong)  # right after scoring: the row may still be queued
    assert (done.outcome, done.label, done.digit, done.disagrees) == (Outcome.STORED, wrong, predicted[0], True)
    again = running.feedback(a, predicted[0])
    assert (again.outcome, again.label) == (Outcome.CONFLICT, wrong)  # the first correction stays
    assert running.feedback(b, predicted[1]).disagrees is False
    assert running.feedback("0" * 32, 3).outcome is Outcome.UNKNOWN
    assert running.counts() == {"written": 2, "dropped": 0, "waiting": 0, "corrections": 2, "disagreements": 1}
    corrected = running.store.corrected()
    assert corrected.ids == [a, b] and corrected.labels.tolist() == [wrong, predicted[1]]
    assert corrected.sources == ["page", "page"]
    assert running.store.recent(2).labels.tolist() == [wrong, predicted[1]]


def test_a_correction_waits_for_its_row_to_be_written(db):
    log = RequestLog.open(f"sqlite:///{db}")
    [queued] = record(log)
    with pytest.raises(LogUnavailable, match="not written yet"):
        log.feedback(queued, 1, wait=0.1)  # no writer: the row stays queued
    log.start()
    assert log.feedback(queued, 1).outcome is Outcome.STORED
    log.stop()


def test_a_broken_store_never_raises_into_the_caller_and_counts_its_drops(tmp_path, caplog):
    (tmp_path / "file").write_text("not a folder")
    log = RequestLog.open(f"sqlite:///{tmp_path / 'file' / 'serving' / 'requests.db'}")
    log.start()
    with caplog.at_level(logging.WARNING, logger="rotmnist.storage.request_log"):
        ids = record(log, 3)
        assert log.flush()
        more = record(log, 2)
        assert log.flush()
    assert None not in ids + more  # queued, then dropped by the writer
    assert log.counts() == {"written": 0, "dropped": 5, "waiting": 0, "corrections": 0, "disagreements": 0}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot be written" in warnings[0].getMessage()  # one per outage
    with pytest.raises(LogUnavailable, match="cannot be reached"):
        log.feedback(ids[0], 1)
    log.stop()


def test_a_store_that_comes_back_is_written_again(tmp_path, caplog):
    blocker = tmp_path / "serving"
    blocker.write_text("in the way")  # the log's folder cannot be made
    log = RequestLog.open(f"sqlite:///{blocker / 'requests.db'}")
    log.start()
    record(log, 2)
    assert log.flush()
    blocker.unlink()
    with caplog.at_level(logging.INFO, logger="rotmnist.storage.request_log"):
        ids = record(log, 3)
        assert log.flush()
    assert log.counts()["dropped"] == 2 and log.counts()["written"] == 3
    assert log.store.recent(10).ids == ids
    assert any("works again" in r.getMessage() for r in caplog.records)
    log.stop()


def test_the_settings_choose_the_store(tmp_path):
    paths = Paths(root=tmp_path, store_root=tmp_path / "stores")
    assert store_url(ServeConfig(), paths) == f"sqlite:///{tmp_path / 'stores' / 'serving' / 'requests.db'}"
    url = "postgresql://rotmnist:secret@db.internal:5432/requests"
    assert store_url(ServeConfig(request_log=url), paths) == url
    log = RequestLog.from_settings(ServeConfig(request_log=url, log_keep_rows=7, log_queue=9), paths)
    assert (log.keep_rows, log.queue_rows) == (7, 9) and "secret" not in log.describe()
    assert RequestLog.from_settings(ServeConfig(log_requests=False), paths) is None
    with pytest.raises(PipelineError, match=r"serve\.request_log") as refused:
        store_url(ServeConfig(request_log="mysql://u:hunter2@db/requests"), paths)
    assert "hunter2" not in str(refused.value)
    assert RequestLog.from_settings(ServeConfig(), paths).describe().endswith("requests.db (WAL)")
