"""`GET /metrics` of the real app: what a Prometheus scrape reads after scoring, corrections and refusals."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rotmnist.config import ServeConfig
from rotmnist.serving.app import create_app
from rotmnist.serving.auth import Access
from rotmnist.serving.model_source import Keeper, ModelSource
from rotmnist.storage.request_log import RequestLog
from tests.support.serving import call, champion_store, post_json, prepared, serving

pytestmark = pytest.mark.slow  # a real MLflow store and a server

NAME = "digits"
SETTINGS = ServeConfig(poll_seconds=0)
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def keeper(tmp_path_factory, empty_store):
    with champion_store(tmp_path_factory.mktemp("metrics-store"), empty_store, NAME):
        source = ModelSource(NAME)
        yield Keeper(source, source.load_initial())


def scrape(url: str, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple], float]:
    status, raw = call(f"{url}/metrics", headers=headers)
    assert status == 200, raw
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(raw.decode())
        for s in family.samples
    }


def test_a_scrape_counts_requests_predictions_inputs_the_model_and_the_log(keeper, tmp_path):
    log = RequestLog.open(f"sqlite:///{tmp_path / 'requests.db'}")
    with serving(create_app(keeper, SETTINGS, log=log)) as url:
        status, answer = post_json(f"{url}/score", {"images": [prepared(1).tolist(), prepared(7).tolist()]})
        assert status == 200
        assert post_json(f"{url}/score", {"images": "nope"})[0] == 422
        assert call(f"{url}/no-such-page")[0] == 404
        first = answer["predictions"][0]
        assert post_json(f"{url}/feedback", {"id": first["id"], "label": 4})[0] == 200  # disagrees with "1"
        assert log.flush()
        got = scrape(url)
    assert got[("rotmnist_requests_total", (("route", "/score"), ("status", "200")))] == 1
    assert got[("rotmnist_requests_total", (("route", "/score"), ("status", "422")))] == 1
    assert got[("rotmnist_requests_total", (("route", "other"), ("status", "404")))] == 1
    assert got[("rotmnist_predictions_total", (("digit", "1"),))] == 1
    assert got[("rotmnist_predictions_total", (("digit", "7"),))] == 1
    assert got[("rotmnist_model_info", (("name", NAME), ("version", "1")))] == 1
    assert got[("rotmnist_log_rows_written_total", ())] == 2
    assert got[("rotmnist_log_rows_dropped_total", ())] == 0
    assert got[("rotmnist_corrections_total", ())] == 1
    assert got[("rotmnist_corrections_disagreeing_total", ())] == 1
    assert got[("rotmnist_top_probability_count", ())] == 2
    assert got[("rotmnist_input_tilt_degrees_bucket", (("le", "+Inf"),))] == 2


def test_metrics_are_as_open_as_scoring(keeper):
    settings = ServeConfig(poll_seconds=0, require_token_for_scoring=True)
    with serving(create_app(keeper, settings, Access.decide(settings, "tok-123", "127.0.0.1"))) as url:
        assert call(f"{url}/metrics")[0] == 401
        assert ("rotmnist_requests_total", (("route", "/metrics"), ("status", "401"))) in scrape(
            url, {"Authorization": "Bearer tok-123"}
        )
    with serving(create_app(keeper, SETTINGS)) as url:  # no log: no log series, no error
        names = {name for name, _ in scrape(url)}
        assert "rotmnist_model_info" in names
        assert not any(name.startswith("rotmnist_log_rows") for name in names)
        assert json.loads(call(f"{url}/openapi.json")[1])["paths"].get("/metrics") is None
