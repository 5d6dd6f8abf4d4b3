"""The server's Prometheus metrics, read back from their exposition text: request counting by route
template and status on a tiny app, the per-image histograms, the model and the request log's counts."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import numpy as np
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from rotmnist.data.rotation import rotate_batch
from rotmnist.serving.metrics import OTHER_ROUTE, RequestMetrics, Telemetry
from rotmnist.serving.requests import BodyLimit
from tests.support.helpers import tiny_mnist
from tests.support.serving import http_scope

Labels = frozenset[tuple[str, str]]


def scraped(telemetry: Telemetry) -> dict[str, dict[Labels, float]]:
    """{sample name: {labels: value}} as a scraper parses `render()`."""
    body, content_type = telemetry.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    out: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


def by(samples: dict[Labels, float], key: str) -> dict[str, float]:
    """The values of samples that differ only in the label `key`, by that label."""
    return {dict(labels)[key]: value for labels, value in samples.items()}


def tiny_app(telemetry: Telemetry, body_limit: int = 100) -> FastAPI:
    app = FastAPI()

    @app.post("/score")
    async def score() -> JSONResponse:
        return JSONResponse({"ok": True})

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> JSONResponse:
        if item_id > 10:
            raise HTTPException(404, "no such item")
        return JSONResponse({"id": item_id})

    @app.get("/boom")
    async def boom() -> JSONResponse:
        raise RuntimeError("the handler failed")

    app.add_middleware(BodyLimit, limit=body_limit)
    app.add_middleware(RequestMetrics, telemetry=telemetry)  # last: outermost
    return app


def request(app, method: str, path: str, body: bytes = b"") -> int:
    """One request straight to the ASGI `app`; its status (500 when the app raises)."""
    scope = http_scope(method, path, [(b"host", b"test"), (b"content-length", str(len(body)).encode())], "test")
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    async def run() -> None:
        with contextlib.suppress(RuntimeError):  # Starlette answers 500, then raises the error again for the server
            await app(scope, receive, send)

    asyncio.run(run())
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def test_requests_are_counted_by_route_template_and_status():
    telemetry = Telemetry()
    app = tiny_app(telemetry)
    statuses = [
        request(app, "POST", "/score"),
        request(app, "POST", "/score"),
        request(app, "GET", "/items/3"),
        request(app, "GET", "/items/4"),
        request(app, "GET", "/items/99"),  # the handler's 404
        request(app, "GET", "/items/abc"),  # 422: the template still names the route
        request(app, "GET", "/score"),  # 405
        request(app, "POST", "/score", b"x" * 101),  # BodyLimit's 413, counted since the metrics sit outside it
        request(app, "GET", "/boom"),
        request(app, "GET", "/nope"),
        request(app, "GET", "/wp-admin/../etc/passwd"),
    ]
    assert statuses == [200, 200, 200, 200, 404, 422, 405, 413, 500, 404, 404]
    counted = {tuple(sorted(k)): v for k, v in scraped(telemetry)["rotmnist_requests_total"].items()}
    assert counted == {
        (("route", "/score"), ("status", "200")): 2,
        (("route", "/items/{item_id}"), ("status", "200")): 2,
        (("route", "/items/{item_id}"), ("status", "404")): 1,
        (("route", "/items/{item_id}"), ("status", "422")): 1,
        (("route", "/score"), ("status", "405")): 1,
        (("route", "/score"), ("status", "413")): 1,
        (("route", "/boom"), ("status", "500")): 1,
        (("route", OTHER_ROUTE), ("status", "404")): 2,
    }


def test_each_request_is_timed_under_its_route():
    telemetry = Telemetry()
    app = tiny_app(telemetry)
    for path in ("/items/1", "/items/2", "/nope"):
        request(app, "GET", path)
    metrics = scraped(telemetry)
    assert by(metrics["rotmnist_request_seconds_count"], "route") == {"/items/{item_id}": 2, OTHER_ROUTE: 1}
    seconds = by(metrics["rotmnist_request_seconds_sum"], "route")
    assert 0 < seconds["/items/{item_id}"] < 5
    infinite = {k: v for k, v in metrics["rotmnist_request_seconds_bucket"].items() if ("le", "+Inf") in k}
    assert sorted(infinite.values()) == [1, 2]


def one_hot(digits: list[int], top: list[float]) -> np.ndarray:
    """Probabilities whose largest is `top[i]` on `digits[i]`, the rest shared evenly."""
    probs = np.repeat(((1 - np.array(top)) / 9)[:, None], 10, axis=1)
    probs[np.arange(len(digits)), digits] = top
    return probs


def test_scores_count_digits_top_probabilities_and_images_per_request():
    telemetry = Telemetry()
    x = tiny_mnist(n_train=5, n_test=0)[0]
    telemetry.observe_batch(x[:3], one_hot([7, 7, 2], [0.999, 0.55, 0.97]))
    telemetry.observe_batch(x[3:], one_hot([7, 0], [0.92, 0.15]))
    metrics = scraped(telemetry)
    assert by(metrics["rotmnist_predictions_total"], "digit") == {"7": 3, "2": 1, "0": 1}
    assert metrics["rotmnist_batch_images_count"][frozenset()] == 2
    assert metrics["rotmnist_batch_images_sum"][frozenset()] == 5
    assert metrics["rotmnist_top_probability_sum"][frozenset()] == pytest.approx(0.999 + 0.55 + 0.97 + 0.92 + 0.15)
    buckets = by(metrics["rotmnist_top_probability_bucket"], "le")
    assert (buckets["0.2"], buckets["0.6"], buckets["0.9"], buckets["0.95"], buckets["0.98"]) == (1, 2, 2, 3, 4)
    assert buckets["0.999"] == buckets["1.0"] == buckets["+Inf"] == 5


def test_a_batch_of_requests_is_counted_as_its_requests_were_one_by_one():
    x = tiny_mnist(n_train=5, n_test=0)[0]
    probs = one_hot([7, 7, 2, 7, 0], [0.999, 0.55, 0.97, 0.92, 0.15])
    one_by_one, batched = Telemetry(), Telemetry()
    one_by_one.observe_batch(x[:3], probs[:3])
    one_by_one.observe_batch(x[3:], probs[3:])
    batched.observe_batch(x, probs, [3, 2])
    expected, got = scraped(one_by_one), scraped(batched)
    assert got.keys() == expected.keys()
    for name, series in expected.items():
        if not name.endswith("_created"):  # when each series was made
            assert got[name] == pytest.approx(series), name


def test_the_tilt_histogram_places_rotated_digits_and_skips_blank_images():
    telemetry = Telemetry()
    ones = np.zeros((6, 28, 28), np.uint8)
    for i in range(6):
        ones[i, 5:23, 10 + i : 13 + i] = 255  # upright strokes
    x = np.concatenate([ones, rotate_batch(ones, 30), np.zeros((4, 28, 28), np.uint8)])
    telemetry.observe_batch(x, one_hot([1] * len(x), [0.9] * len(x)))
    buckets = by(scraped(telemetry)["rotmnist_input_tilt_degrees_bucket"], "le")
    assert buckets["+Inf"] == 12  # the blank images have no tilt to report
    assert (buckets["-5.0"], buckets["5.0"], buckets["25.0"], buckets["35.0"]) == (0, 6, 6, 12)


def test_the_model_is_read_at_each_scrape():
    telemetry = Telemetry()
    assert scraped(telemetry)["rotmnist_model_info"] == {frozenset({("name", ""), ("version", "")}): 1}
    served = {"name": "rotmnist", "version": "3", "uri": "models:/rotmnist/3"}
    telemetry.bind_model(lambda: served)
    assert scraped(telemetry)["rotmnist_model_info"] == {frozenset({("name", "rotmnist"), ("version", "3")}): 1}
    served = {"name": "rotmnist", "version": "4"}  # a hot swap
    assert scraped(telemetry)["rotmnist_model_info"] == {frozenset({("name", "rotmnist"), ("version", "4")}): 1}
    telemetry.bind_model(lambda: {"name": "a-file", "version": None})
    assert scraped(telemetry)["rotmnist_model_info"] == {frozenset({("name", "a-file"), ("version", "")}): 1}


LOG_SERIES = (
    "rotmnist_log_rows_written_total",
    "rotmnist_log_rows_dropped_total",
    "rotmnist_corrections_total",
    "rotmnist_corrections_disagreeing_total",
)


def test_the_request_log_counts_are_read_at_each_scrape_and_absent_without_a_log():
    telemetry = Telemetry()
    assert set(LOG_SERIES) & set(scraped(telemetry)) == set()
    counts = {"written": 10, "dropped": 2, "corrections": 4, "disagreements": 1}
    telemetry.bind_log(lambda: counts)
    counts = {"written": 12, "dropped": 2, "corrections": 5, "disagreements": 3, "waiting": 0}
    metrics = scraped(telemetry)
    assert [metrics[name][frozenset()] for name in LOG_SERIES] == [12, 2, 5, 3]


def test_a_failing_log_leaves_its_counters_out_and_the_rest_of_the_scrape_intact(caplog):
    telemetry = Telemetry()
    telemetry.bind_log(lambda: {"written": 1})  # the other counts are missing
    with caplog.at_level(logging.WARNING, logger="rotmnist.serving.metrics"):
        metrics = scraped(telemetry)
    assert set(LOG_SERIES) & set(metrics) == set()
    assert "rotmnist_model_info" in metrics
    assert "the request log's counts are unavailable (KeyError" in caplog.text


def test_each_telemetry_has_its_own_registry():
    first, second = Telemetry(), Telemetry()
    first.observe_request("/score", 200, 0.01)
    assert "rotmnist_requests_total" in scraped(first)
    assert "rotmnist_requests_total" not in scraped(second)
    shared = CollectorRegistry()
    Telemetry(shared)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Telemetry(shared)
