"""SIGKILL of the real `rotmnist serve` under load: the request log loses at most its queue, the next start appends.

Four clients score JSON batches of drawn digits until the server is killed with SIGKILL. A copy of the SQLite
file as the kill left it (with its write-ahead log) must open, pass `PRAGMA integrity_check`, hold only whole
rows, and hold every prediction answered more than `SETTLE` s before the kill. Then the server starts again on
the same folder: it appends after the old rows and takes a correction of a prediction made before the kill.
"""

from __future__ import annotations

import http.client
import itertools
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from rotmnist.storage.request_store import RequestStore
from tests.support.serving import champion_store, post_json, prepared, rotmnist_serve, wait_for

pytestmark = pytest.mark.slow  # a registered model, two server subprocesses, seconds of load: 30-60 s

NAME = "digits"
PARAMS = {"monitor": {"model_name": NAME}, "serve": {"poll_seconds": 0}}
CLIENTS, BATCH = 4, 8
LOAD_SECONDS = 4.0  # of load before the kill
SETTLE = 1.0  # the writer empties its queue continuously: an answer this old was written
DRAWN = [prepared(d) for d in range(10)]
IMAGES = [image.tolist() for image in DRAWN]
DB_FILES = ("requests.db", "requests.db-wal", "requests.db-shm")


@dataclass(frozen=True)
class Answer:
    at: float  # time.monotonic() when the answer arrived
    status: int
    ids: list[str | None]
    digits: list[int]


@dataclass(frozen=True)
class Killed:
    folder: Path  # the workspace; its log is serving/requests.db
    snapshot: Path  # a copy of the log's files as the kill left them
    answers: list[Answer]
    killed_at: float  # time.monotonic() just before the SIGKILL

    def answered(self, before: float = 0.0) -> dict[str, int]:
        """id -> digit sent, of the predictions answered with an id at least `before` s before the kill."""
        return {
            id: d
            for a in self.answers
            if a.at <= self.killed_at - before
            for id, d in zip(a.ids, a.digits, strict=True)
            if id is not None
        }


def client(url: str, k: int, stop: threading.Event, answers: list[Answer]) -> None:
    """Score batches of `BATCH` digits until `stop` is set or the server dies."""
    for i in itertools.count():
        if stop.is_set():
            return
        digits = [(k + i + j) % 10 for j in range(BATCH)]
        try:
            status, answer = post_json(f"{url}/score", {"images": [IMAGES[d] for d in digits]})
        except (OSError, http.client.HTTPException, ValueError):  # killed mid-request: no answer
            return
        ids = [p.get("id") for p in answer.get("predictions", [])]
        answers.append(Answer(time.monotonic(), status, ids, digits))


@pytest.fixture(scope="module")
def killed(tmp_path_factory, empty_store) -> Iterator[Killed]:
    """A server on a new workspace, SIGKILLed after `LOAD_SECONDS` of load from `CLIENTS` clients."""
    with champion_store(tmp_path_factory.mktemp("kill-store"), empty_store, NAME) as store:
        folder = store / "workspace"
        folder.mkdir()
        answers: list[Answer] = []
        stop = threading.Event()
        with rotmnist_serve(folder, PARAMS) as (proc, url):
            clients = [threading.Thread(target=client, args=(url, k, stop, answers)) for k in range(CLIENTS)]
            for thread in clients:
                thread.start()
            time.sleep(LOAD_SECONDS)
            killed_at = time.monotonic()
            proc.kill()  # SIGKILL: no shutdown, no last flush of the queue
            proc.wait(30)
            stop.set()
            for thread in clients:
                thread.join(60)
        snapshot = tmp_path_factory.mktemp("kill-snapshot")
        for name in DB_FILES:
            if (folder / "serving" / name).exists():
                shutil.copy(folder / "serving" / name, snapshot / name)
        yield Killed(folder, snapshot, answers, killed_at)


def test_the_server_died_mid_load_with_its_log_not_closed(killed):
    assert killed.answers and all(a.status == 200 for a in killed.answers)
    assert max(a.at for a in killed.answers) > killed.killed_at - SETTLE  # answering until the kill
    assert len(killed.answered(before=SETTLE)) >= 10 * BATCH
    assert (killed.snapshot / "requests.db-wal").exists()  # not checkpointed away: a crash to recover from


def test_the_file_opens_and_passes_the_integrity_check(killed):
    with sqlite3.connect(killed.snapshot / "requests.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_every_row_is_whole(killed):
    with sqlite3.connect(killed.snapshot / "requests.db") as db:
        rows = db.execute("SELECT id, image, probabilities, digit, route, source, version FROM request_log").fetchall()
    ids, images, probabilities, digits, *where = zip(*rows, strict=True)
    sent = killed.answered()
    assert len(set(ids) & set(sent)) >= len(sent) // 2
    assert {len(id) for id in ids} == {32} and set(zip(*where, strict=True)) == {("/score", "json", "1")}
    assert {len(image) for image in images} == {784} and {len(p) for p in probabilities} == {40}
    probs = np.frombuffer(b"".join(probabilities), "<f4").reshape(len(rows), 10)
    assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-4)
    assert probs.argmax(1).tolist() == list(digits)
    assert all(image == DRAWN[d].tobytes() for image, d in zip(images, digits, strict=True))
    assert all(sent.get(id, d) == d for id, d in zip(ids, digits, strict=True))  # unanswered rows (in flight) too
    decoded = RequestStore(f"sqlite:///{killed.snapshot / 'requests.db'}").recent(len(rows) + 1)
    assert len(decoded.ids) == len(rows) and decoded.images.shape == (len(rows), 28, 28)


def test_only_the_last_moments_answers_may_be_missing(killed):
    with sqlite3.connect(killed.snapshot / "requests.db") as db:
        stored = {id for (id,) in db.execute("SELECT id FROM request_log")}
    settled = killed.answered(before=SETTLE)
    assert len(settled) < len(killed.answered())  # the last second's answers: those the queue may have held
    assert not set(settled) - stored


def test_the_next_start_appends_and_takes_a_correction_of_an_old_prediction(killed):
    db = killed.folder / "serving" / "requests.db"
    with sqlite3.connect(killed.snapshot / "requests.db") as snapshot:
        before = [id for (id,) in snapshot.execute("SELECT id FROM request_log ORDER BY seq")]
    old = next(iter(killed.answered(before=SETTLE).items()))
    with rotmnist_serve(killed.folder, PARAMS) as (_, url):
        status, answer = post_json(f"{url}/score", {"images": [IMAGES[d] for d in (4, 2)]})
        assert status == 200
        new = [p["id"] for p in answer["predictions"]]
        wrong = (old[1] + 1) % 10
        assert post_json(f"{url}/feedback", {"id": old[0], "label": wrong}) == (
            200,
            {"id": old[0], "label": wrong, "predicted": old[1], "disagrees": True},
        )
        wait_for(lambda: len(RequestStore(f"sqlite:///{db}").recent(len(before) + 10).ids) == len(before) + 2)
    rows = RequestStore(f"sqlite:///{db}").recent(len(before) + 10)
    assert rows.ids == [*before, *new] and rows.digits[-2:].tolist() == [4, 2]
    assert rows.labels[before.index(old[0])] == wrong and (rows.labels >= 0).sum() == 1
    log = (killed.folder / "serve.log").read_text()
    assert "requests logged to SQLite" in log and "cannot be written" not in log
