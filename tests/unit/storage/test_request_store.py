"""The request log's SQL store alone: readers open it, read and close it, and never start a writer thread."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from rotmnist.config import ServeConfig
from rotmnist.storage.request_log import RequestLog
from rotmnist.storage.request_store import RequestStore, Scored


def scored(ids: list[str]) -> Scored:
    x = np.full((len(ids), 28, 28), 200.4, np.float32)
    probs = np.eye(10, dtype=np.float32)[[3] * len(ids)]
    return Scored(ids, 1_000.0, "digits", "2", "/score", "json", x, probs)


def test_a_reader_reads_what_was_inserted_and_starts_no_thread(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'serving' / 'requests.db'}"
    threads = {t.name for t in threading.enumerate()}
    with RequestStore(url) as store:
        assert store.missing
        store.insert([scored(["a" * 32, "b" * 32]), scored(["c" * 32])])
        assert not store.missing
    with RequestStore(url) as reader:
        rows = reader.recent(10)
        assert reader.corrected().ids == []
        assert {t.name for t in threading.enumerate()} == threads  # no "request-log" writer
    assert rows.ids == ["a" * 32, "b" * 32, "c" * 32] and rows.digits.tolist() == [3, 3, 3]
    assert rows.images.dtype == np.uint8 and np.all(rows.images == 200) and rows.times.tolist() == [1_000.0] * 3


def test_the_retention_takes_its_limits_from_the_caller(tmp_path: Path):
    with RequestStore(f"sqlite:///{tmp_path / 'requests.db'}") as store:
        store.insert([scored([f"{i:032d}" for i in range(5)])])
        assert store.prune(keep_rows=10, keep_days=1.0, now=1_000.0 + 86_400.0 - 1) == 0
        assert store.prune(keep_rows=3, keep_days=1.0, now=1_000.0) == 2
        assert store.prune(keep_rows=10, keep_days=1.0, now=1_000.0 + 86_400.0 + 1) == 3
        assert store.recent(10).ids == []


def test_the_writer_takes_its_retention_and_queue_from_serve_settings(tmp_path: Path):
    defaults = ServeConfig()
    log = RequestLog.open(f"sqlite:///{tmp_path / 'requests.db'}")
    assert (log.keep_rows, log.keep_days, log.queue_rows) == (
        defaults.log_keep_rows,
        defaults.log_keep_days,
        defaults.log_queue,
    )
    chosen = RequestLog.open(log.store.url, ServeConfig(log_keep_rows=7, log_keep_days=2.5, log_queue=9))
    assert (chosen.keep_rows, chosen.keep_days, chosen.queue_rows) == (7, 2.5, 9)


def test_a_postgresql_store_describes_itself_without_its_password_even_one_holding_an_at_sign():
    store = RequestStore("postgresql://ann:s3cr@t@db.example:5432/log")  # no connection is made
    assert store.describe() == "postgresql://ann:***@db.example:5432/log"
