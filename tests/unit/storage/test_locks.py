"""The store lock: processes take turns on a file store, give up with a clear error, and skip tracking servers."""

from __future__ import annotations

import itertools
import multiprocessing
import time
from pathlib import Path

import pytest

from rotmnist.errors import PipelineError
from rotmnist.storage import locks


def _hold(url: str, log: str, tag: str, seconds: float) -> None:
    with locks.store_lock(url, "tables"):
        with open(log, "a") as f:
            f.write(f"{tag} in {time.time()}\n")
        time.sleep(seconds)
        with open(log, "a") as f:
            f.write(f"{tag} out {time.time()}\n")


def _spans(log: Path) -> list[tuple[float, float]]:
    events = [line.split() for line in log.read_text().splitlines()]
    starts = {tag: float(t) for tag, kind, t in events if kind == "in"}
    ends = {tag: float(t) for tag, kind, t in events if kind == "out"}
    return sorted((starts[tag], ends[tag]) for tag in starts)


def test_processes_holding_a_file_store_lock_take_turns(tmp_path):
    url, log = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "log"
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_hold, args=(url, str(log), str(i), 0.3)) for i in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    spans = _spans(log)
    assert len(spans) == 3
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
    assert (tmp_path / ("mlflow.db" + locks.LOCK_SUFFIX)).exists()


def test_a_lock_held_too_long_is_a_pipeline_error_naming_it(tmp_path):
    url = str(tmp_path / "optuna" / "journal.log")
    ctx = multiprocessing.get_context("fork")
    holder = ctx.Process(target=_hold, args=(url, str(tmp_path / "log"), "0", 3.0))
    holder.start()
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "log").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        wanted = r"waited 0 s for the lock 'study s'.*another process holds"
        with pytest.raises(PipelineError, match=wanted), locks.store_lock(url, "study s", wait=0.2):
            pass
    finally:
        holder.join(30)


def test_the_lock_is_released_when_the_block_raises(tmp_path):
    url = f"journal:{tmp_path / 'journal.log'}"
    with pytest.raises(KeyError), locks.store_lock(url, "x"):
        raise KeyError("boom")
    with locks.store_lock(url, "x", wait=0.1):
        pass


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:////srv/mlflow.db", Path("/srv/mlflow.db")),
        ("journal:/srv/journal.log", Path("/srv/journal.log")),
        ("optuna/journal.log", Path("optuna/journal.log")),
        ("http://127.0.0.1:5000", None),
        ("postgresql://u@h/db", None),
    ],
)
def test_file_of_names_the_file_behind_a_store_url(url, expected):
    assert locks.file_of(url) == expected


def test_a_tracking_server_is_not_locked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with locks.store_lock("http://127.0.0.1:1", "mlflow tables"):
        pass
    assert not list(tmp_path.iterdir())


def test_lock_keys_are_stable_signed_64_bit_integers():
    key = locks.lock_key("study s")
    assert key == locks.lock_key("study s") != locks.lock_key("study t")
    assert -(2**63) <= key < 2**63
