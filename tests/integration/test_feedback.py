"""The request log and `POST /feedback` through a real server: ids in the answers, rows in the store, corrections.

The champion is the template model of tests/support/serving.py; the log is a SQLite file in a temp folder
(and, when PostgreSQL is installed, a database shared by two replicas).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from rotmnist.config import ServeConfig
from rotmnist.serving.app import create_app
from rotmnist.serving.auth import Access
from rotmnist.serving.model_source import Keeper, ModelSource
from rotmnist.storage.request_log import RequestLog
from rotmnist.storage.request_store import RequestStore
from tests.support.serving import (
    call,
    champion_store,
    drawing,
    get_json,
    multipart,
    png_bytes,
    post_json,
    prepared,
    rotmnist_serve,
    serving,
)

pytestmark = pytest.mark.slow  # a real MLflow store and servers: seconds per module

NAME = "digits"
SETTINGS = ServeConfig(poll_seconds=0, max_images=16)
HEX_ID = re.compile(r"[0-9a-f]{32}")
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def store(tmp_path_factory, empty_store):
    with champion_store(tmp_path_factory.mktemp("feedback-store"), empty_store, NAME) as folder:
        yield folder


@pytest.fixture(scope="module")
def keeper(store):
    source = ModelSource(NAME)
    return Keeper(source, source.load_initial())


@pytest.fixture(scope="module")
def logged(keeper, tmp_path_factory):
    """A server recording in a SQLite log; yields its URL and the log."""
    log = RequestLog.open(f"sqlite:///{tmp_path_factory.mktemp('feedback-log') / 'serving' / 'requests.db'}")
    with serving(create_app(keeper, SETTINGS, log=log)) as base:
        yield base, log


def images(*digits: int) -> list:
    return [prepared(d).tolist() for d in digits]


def rows_of(log: RequestLog, ids: list[str]) -> dict[str, tuple]:
    """id -> (route, source, version, digit, label, image) of the logged rows among `ids`."""
    assert log.flush()
    rows = log.store.recent(10_000)
    found = zip(rows.ids, rows.routes, rows.sources, rows.versions, rows.digits, rows.labels, rows.images, strict=True)
    return {row[0]: row[1:] for row in found if row[0] in ids}


def correct(url: str, id, label, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    body = json.dumps({"id": id, "label": label}).encode()
    status, raw = call(f"{url}/feedback", "POST", body, {**JSON, **(headers or {})})
    return status, json.loads(raw)


def test_json_batches_answer_an_id_per_prediction_and_log_what_the_model_saw(logged):
    url, log = logged
    status, answer = post_json(f"{url}/score", {"images": images(3, 0, 7)})
    assert status == 200
    ids = [p["id"] for p in answer["predictions"]]
    assert all(HEX_ID.fullmatch(i) for i in ids) and len(set(ids)) == 3
    rows = rows_of(log, ids)
    assert [rows[i][:4] for i in ids] == [("/score", "json", "1", d) for d in (3, 0, 7)]
    assert all(np.array_equal(rows[i][5], prepared(d)) for i, d in zip(ids, (3, 0, 7), strict=True))


def test_uploads_and_the_page_are_told_apart(logged):
    url, log = logged
    body, kind = multipart([("file", "four.png", png_bytes(drawing(4))), ("file", "two.png", png_bytes(drawing(2)))])
    status, raw = call(f"{url}/score", "POST", body, {"Content-Type": kind})
    uploaded = [p["id"] for p in json.loads(raw)["predictions"]]
    status_raw, raw = call(f"{url}/score", "POST", png_bytes(drawing(9)), {"Content-Type": "image/png"})
    uploaded += [json.loads(raw)["predictions"][0]["id"]]
    page_headers = {"Content-Type": "image/png", "X-Rotmnist-Source": "page"}
    _, raw = call(f"{url}/score", "POST", png_bytes(drawing(1)), page_headers)
    [from_page] = [p["id"] for p in json.loads(raw)["predictions"]]
    assert status == status_raw == 200
    rows = rows_of(log, [*uploaded, from_page])
    assert [rows[i][1] for i in uploaded] == ["upload"] * 3 and rows[from_page][1] == "page"
    assert [rows[i][3] for i in [*uploaded, from_page]] == [4, 2, 9, 1]
    assert np.array_equal(rows[uploaded[0]][5], prepared(4))  # as prepared for the model, not the PNG


def test_invocations_keeps_mlflows_predictions_and_adds_ids(logged):
    url, log = logged
    status, answer = post_json(f"{url}/invocations", {"inputs": images(5, 8)})
    assert status == 200 and set(answer) == {"predictions", "ids"}
    assert np.array(answer["predictions"]).argmax(1).tolist() == [5, 8] and len(answer["ids"]) == 2
    rows = rows_of(log, answer["ids"])
    assert [rows[i][:4] for i in answer["ids"]] == [("/invocations", "json", "1", 5), ("/invocations", "json", "1", 8)]


def test_a_prediction_takes_one_correction(logged):
    url, log = logged
    before = log.counts()
    _, answer = post_json(f"{url}/score", {"images": images(7, 3)})
    wrong, right = (p["id"] for p in answer["predictions"])
    assert correct(url, wrong, 1) == (200, {"id": wrong, "label": 1, "predicted": 7, "disagrees": True})  # at once
    assert correct(url, right, 3.0) == (200, {"id": right, "label": 3, "predicted": 3, "disagrees": False})
    status, problem = correct(url, wrong, 7)
    assert status == 409 and "corrected before (as 1)" in problem["error"]
    rows = rows_of(log, [wrong, right])
    assert (rows[wrong][4], rows[right][4]) == (1, 3)
    after = log.counts()
    assert (after["corrections"] - before["corrections"], after["disagreements"] - before["disagreements"]) == (2, 1)


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"id": "f" * 32, "label": 4}, 404, "no recorded prediction"),
        ({"id": "x", "label": 10}, 422, "label must be an integer 0-9"),
        ({"id": "x", "label": -1}, 422, "label must be"),
        ({"id": "x", "label": "7"}, 422, "label must be"),
        ({"id": "x", "label": True}, 422, "label must be"),
        ({"id": "x", "label": 7.5}, 422, "label must be"),
        ({"id": "x"}, 422, "label must be"),
        ({"label": 7}, 422, "prediction's id"),
        ({"id": "", "label": 7}, 422, "prediction's id"),
        ({"id": "x" * 65, "label": 7}, 422, "prediction's id"),
        ([{"id": "x", "label": 7}], 422, "prediction's id"),
    ],
)
def test_feedback_refuses_what_it_cannot_store(logged, body, status, says):
    url, _ = logged
    answer = post_json(f"{url}/feedback", body)
    assert answer[0] == status and says in answer[1]["error"]


def test_feedback_refuses_bodies_that_are_not_json(logged):
    url, _ = logged
    assert call(f"{url}/feedback", "POST", b"{id: 7", {"Content-Type": "application/json"})[0] == 400
    assert call(f"{url}/feedback", "POST", b"id=x&label=7", {"Content-Type": "text/plain"})[0] == 415


def test_a_store_that_is_down_costs_scoring_nothing_and_corrections_get_503(keeper, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    log = RequestLog.open(f"sqlite:///{tmp_path / 'file' / 'requests.db'}")
    with serving(create_app(keeper, SETTINGS, log=log)) as url:
        status, answer = post_json(f"{url}/score", {"images": images(6)})
        assert status == 200 and answer["predictions"][0]["digit"] == 6
        assert log.flush() and log.counts()["dropped"] == 1
        status, problem = correct(url, answer["predictions"][0]["id"], 5)
    assert status == 503 and "try again" in problem["error"]


def test_with_the_log_off_answers_carry_no_ids_and_feedback_says_why(keeper):
    with serving(create_app(keeper, SETTINGS)) as url:
        _, scored = post_json(f"{url}/score", {"images": images(2)})
        _, invoked = post_json(f"{url}/invocations", {"inputs": images(2)})
        status, problem = correct(url, "f" * 32, 2)
    assert "id" not in scored["predictions"][0] and set(invoked) == {"predictions"}
    assert status == 404 and "serve.log_requests is false" in problem["error"]


def test_feedback_needs_the_token_when_scoring_does(keeper, tmp_path):
    settings = ServeConfig(poll_seconds=0, require_token_for_scoring=True)
    access = Access.decide(settings, "t0ken", "127.0.0.1")
    log = RequestLog.open(f"sqlite:///{tmp_path / 'requests.db'}")
    auth = {"Authorization": "Bearer t0ken"}
    with serving(create_app(keeper, settings, access, log)) as url:
        status, raw = call(f"{url}/score", "POST", json.dumps({"images": images(4)}).encode(), {**auth, **JSON})
        assert status == 200
        [id] = [p["id"] for p in json.loads(raw)["predictions"]]
        assert correct(url, id, 9)[0] == 401
        assert correct(url, id, 9, auth)[0] == 200
        _, doc = get_json(f"{url}/openapi.json")
    assert doc["paths"]["/feedback"]["post"]["security"] == [{"bearer": []}]


def test_rotmnist_serve_logs_to_the_store_roots_sqlite_file(store, tmp_path):
    folder = tmp_path / "workspace"
    folder.mkdir()
    with rotmnist_serve(folder, {"monitor": {"model_name": NAME}, "serve": {"poll_seconds": 0}}) as (_, url):
        _, answer = post_json(f"{url}/score", {"images": images(8)})
        assert correct(url, answer["predictions"][0]["id"], 8)[0] == 200
    log = (folder / "serve.log").read_text()
    db = folder / "serving" / "requests.db"
    assert f"requests logged to SQLite {db} (WAL)" in log
    assert RequestStore(f"sqlite:///{db}").corrected().labels.tolist() == [8]


def test_replicas_share_a_postgresql_log(keeper, postgres):
    from tests.support.postgres import fresh_database

    url = fresh_database(postgres["registry"], "requests")
    first, second = RequestLog.open(url), RequestLog.open(url)  # two replicas start together on an empty database
    with serving(create_app(keeper, SETTINGS, log=first)) as a, serving(create_app(keeper, SETTINGS, log=second)) as b:
        _, answer = post_json(f"{a}/score", {"images": images(0, 5)})
        zero, five = (p["id"] for p in answer["predictions"])
        assert correct(b, zero, 6)[0] == 200  # scored by one replica, corrected through the other
        assert correct(a, zero, 0)[0] == 409
        assert correct(b, five, 5)[1]["disagrees"] is False
        _, invoked = post_json(f"{b}/invocations", {"inputs": images(3)})
        assert second.flush()
    rows = RequestStore(url).recent(10)
    assert rows.ids == [zero, five, *invoked["ids"]] and rows.labels.tolist() == [6, 5, -1]
    assert rows.routes == ["/score", "/score", "/invocations"] and rows.versions == ["1"] * 3
    assert first.counts()["dropped"] == second.counts()["dropped"] == 0
    assert rows.sources == ["json"] * 3
