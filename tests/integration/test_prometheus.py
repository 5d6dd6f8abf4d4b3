"""A real Prometheus scrapes a server's `GET /metrics` and answers queries on what it read (Debian's package)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from rotmnist.serving.metrics import RequestMetrics, Telemetry
from tests.support.serving import call, free_socket, serving, stop
from tests.support.tools import require

PROMETHEUS = Path("/usr/bin/prometheus")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def prometheus_installed():
    require(PROMETHEUS.exists(), "Prometheus", "prometheus")


def metrics_app() -> FastAPI:
    """A scoring route that records a fixed answer, and `/metrics`, with the metrics middleware outermost."""
    telemetry = Telemetry()
    telemetry.bind_model(lambda: {"name": "rotmnist", "version": "7"})
    app = FastAPI()

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        x = np.zeros((2, 28, 28), np.uint8)
        x[:, 5:23, 12:15] = 255
        probs = np.full((2, 10), 0.01)
        probs[:, 1] = 0.91
        telemetry.observe_batch(x, probs)
        return JSONResponse({"predictions": [1, 1]})

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = telemetry.render()
        return Response(body, media_type=content_type)

    app.add_middleware(RequestMetrics, telemetry=telemetry)
    return app


def free_port() -> int:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    return port


def scrape_config(target: str) -> str:
    """A prometheus.yml that scrapes `target` (host:port) every second."""
    return json.dumps(  # JSON is YAML
        {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "rotmnist", "static_configs": [{"targets": [target]}]}],
        }
    )


@contextlib.contextmanager
def prometheus(folder: Path, target: str) -> Iterator[str]:
    """Prometheus scraping `target`, its data and log in `folder`; yields its base URL."""
    (folder / "prometheus.yml").write_text(scrape_config(target))
    port = free_port()
    cmd = [
        str(PROMETHEUS),
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with open(folder / "prometheus.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def query(base: str, promql: str) -> list[dict]:
    """The instant vector `promql` evaluates to now (empty while Prometheus is starting or has nothing)."""
    try:
        return api(base, "query", query=promql)["result"]
    except OSError:  # not listening yet, or a 503 while it starts
        return []


def api(base: str, endpoint: str, **params: str) -> dict:
    """The `data` of Prometheus's HTTP API answer at `/api/v1/<endpoint>?<params>`."""
    url = f"{base}/api/v1/{endpoint}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)["data"]


def read_back(base: str, promql: str, folder: Path, timeout: float = 60.0) -> list[dict]:
    """Query until `promql` has a series; fail with the scrape target's last error and Prometheus's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = query(base, promql)
        if result:
            return result
        time.sleep(0.25)
    try:
        targets = api(base, "targets")["activeTargets"]
    except OSError:
        targets = "Prometheus does not answer"
    log = (folder / "prometheus.log").read_text()
    raise AssertionError(f"{promql} not scraped within {timeout} s; targets: {targets}\n{log}")


def test_prometheus_scrapes_the_metrics_and_answers_queries_on_them(tmp_path):
    with serving(metrics_app()) as url:
        for _ in range(3):
            assert call(f"{url}/score", "POST", b"")[0] == 200
        assert call(f"{url}/no/such/page")[0] == 404
        target = urllib.parse.urlsplit(url).netloc
        with prometheus(tmp_path, target) as base:
            scored = read_back(base, 'rotmnist_requests_total{route="/score",status="200"}', tmp_path)
            assert [float(s["value"][1]) for s in scored] == [3.0]
            assert scored[0]["metric"]["job"] == "rotmnist"
            assert float(read_back(base, 'rotmnist_requests_total{route="other"}', tmp_path)[0]["value"][1]) == 1
            assert float(read_back(base, 'rotmnist_predictions_total{digit="1"}', tmp_path)[0]["value"][1]) == 6
            model = read_back(base, "rotmnist_model_info", tmp_path)[0]["metric"]
            assert (model["name"], model["version"]) == ("rotmnist", "7")
            # Prometheus's own scrapes go through the middleware too: it counts them under /metrics.
            assert read_back(base, 'rotmnist_requests_total{route="/metrics",status="200"}', tmp_path)
