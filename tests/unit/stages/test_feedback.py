"""Stage `feedback` on a real SQLite request log: what it exports, byte-identical re-runs, nothing lost."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from rotmnist.config import Config
from rotmnist.data import feedback
from rotmnist.errors import PipelineError
from rotmnist.paths import Paths
from rotmnist.stages import feedback as stage
from rotmnist.storage.request_log import RequestLog
from rotmnist.storage.request_store import Outcome

RNG = np.random.default_rng(0)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    return Paths(root=tmp_path, store_root=tmp_path)


def serve_and_correct(paths: Paths, n: int, corrected: dict[int, int]) -> list[str]:
    """Log `n` scored images as the server does; correct the rows `corrected` names ({row: label})."""
    log = RequestLog.open(f"sqlite:///{paths.request_log}")
    log.start()
    x = RNG.uniform(0, 255, (n, 28, 28)).astype(np.float32)
    ids = log.record(x, RNG.dirichlet(np.ones(10), n).astype(np.float32), "rotmnist-cnn", "1", "/score", "json")
    assert log.flush()
    for row, label in corrected.items():
        assert log.feedback(ids[row], label).outcome is Outcome.STORED
    log.stop()
    return ids


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.npy"))}


def test_the_corrected_rows_are_exported_divided_by_request_and_a_rerun_writes_the_same_bytes(paths):
    corrected = {i: i % 10 for i in range(0, 200, 2)}  # every other row of 200
    ids = serve_and_correct(paths, 200, corrected)
    config = Config()
    stage.main(config, paths)
    parts = {name: feedback.load(paths.feedback / name) for name in feedback.FOLDERS}
    exported = {i: int(y) for p in parts.values() for i, y in zip(p.request_id, p.data.y, strict=True)}
    assert exported == {ids[row]: label for row, label in corrected.items()}
    held = set(parts["holdout"].request_id)
    assert held == {i for i in exported if feedback.is_held_out(np.array([i]), 0.2)[0]} and 5 < len(held) < 40
    images = sqlite3.connect(paths.request_log).execute("SELECT id, image FROM request_log").fetchall()
    by_id = {i: np.frombuffer(b, np.uint8).reshape(28, 28) for i, b in images}
    train = parts["train"]
    assert all(np.array_equal(by_id[i], x) for i, x in zip(train.request_id, train.data.x, strict=True))
    before, threads = files(paths.feedback), threading.active_count()
    stage.main(config, paths)
    assert files(paths.feedback) == before
    assert threading.active_count() == threads  # the stage reads the store and starts no writer thread


def test_corrections_the_log_no_longer_holds_stay_and_new_ones_join(paths):
    first = serve_and_correct(paths, 10, {0: 1, 1: 2})
    stage.main(Config(), paths)
    sqlite3.connect(paths.request_log).execute("DELETE FROM request_log").connection.commit()  # the retention
    second = serve_and_correct(paths, 10, {5: 3})
    stage.main(Config(), paths)
    parts = [feedback.load(paths.feedback / name) for name in feedback.FOLDERS]
    assert {i for p in parts for i in p.request_id} == {first[0], first[1], second[5]}


def test_no_request_log_exports_no_corrections_and_creates_no_log(paths):
    stage.main(Config(), paths)
    assert not paths.request_log.exists()
    assert [len(feedback.load(paths.feedback / name)) for name in feedback.FOLDERS] == [0, 0]


def test_an_unreachable_log_is_one_line_naming_it(paths):
    config = Config.model_validate({"serve": {"request_log": "postgresql://u:secret@127.0.0.1:9/none"}})
    with pytest.raises(PipelineError, match="cannot reach the database") as err:
        stage.main(config, paths)
    assert "secret" not in str(err.value) and "\n" not in str(err.value)
    assert not paths.feedback.exists()
