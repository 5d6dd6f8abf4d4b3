"""What `rotmnist serve` reports to a Prometheus scraper on `GET /metrics`, in Prometheus's text format.

`Telemetry` holds every metric in a registry of its own (one per app, so tests build several apps):

- requests by route and status, and their latency, counted by the ASGI middleware `RequestMetrics`;
- per scored batch (`observe_batch`, the micro-batcher's observer): each request's number of images, the
  predicted digits, the top probability and the estimated tilt of each input (`rotmnist.data.features`),
  accumulated with numpy over the whole batch;
- read at each scrape from callables the app binds: the served model (`bind_model`, so a hot swap shows
  at once) and the request log's rows written and dropped and the corrections received (`bind_log`).

Route labels are the routes' path templates (`/score`, `/docs/static`), and `other` for a path no route
knows, so a client cannot grow the number of series.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, InfoMetricFamily, Metric
from prometheus_client.utils import floatToGoString
from starlette.routing import BaseRoute, Match

from rotmnist.data.features import ink_mass, tilt_degrees

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

OTHER_ROUTE = "other"  # the route label of a path that no route of the app matches
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
IMAGES_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# The top of 10 probabilities is at least 0.1; a confident model lives above 0.9, so the detail is there.
PROBABILITY_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)
# 10-degree buckets centred on the allowed angles (-30 ... 30): (-35, -25] holds digits turned by about -30.
TILT_BUCKETS = tuple(float(edge) for edge in range(-85, 90, 10))
LOG_COUNTS = {  # bind_log's keys -> (counter, help)
    "written": ("rotmnist_log_rows_written", "Rows the request log has written."),
    "dropped": ("rotmnist_log_rows_dropped", "Rows the request log dropped (its queue was full)."),
    "corrections": ("rotmnist_corrections", "Corrections (the true digit) received for logged predictions."),
    "disagreements": ("rotmnist_corrections_disagreeing", "Corrections whose digit differs from the prediction."),
}


class _BatchHistogram:
    """A histogram fed a whole array at a time (one numpy pass, not one `observe` per image).

    With a negative bound it has no `_sum` or `_count` (the client library's rule: a sum that can fall is
    no counter); its `+Inf` bucket is the count.
    """

    def __init__(self, name: str, documentation: str, bounds: Sequence[float]):
        self.name, self.documentation = name, documentation
        self.bounds = np.asarray(bounds, np.float64)
        self._counts = np.zeros(len(bounds) + 1, np.int64)  # the last one: above every bound (+Inf)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, values: np.ndarray) -> None:
        values = np.asarray(values, np.float64).ravel()
        counts = np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def family(self) -> HistogramMetricFamily:
        with self._lock:
            cumulative, total = np.cumsum(self._counts).tolist(), self._sum
        les = [*(floatToGoString(b) for b in self.bounds), "+Inf"]
        return HistogramMetricFamily(
            self.name, self.documentation, buckets=list(zip(les, cumulative, strict=True)), sum_value=total
        )


class Telemetry:
    """The server's metrics in a registry of their own; `render` writes them for `GET /metrics`."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("rotmnist_requests", "HTTP requests answered.", ["route", "status"], registry=r)
        self.request_seconds = Histogram(
            "rotmnist_request_seconds",
            "Time from a request's arrival to the end of its answer, in seconds.",
            ["route"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.batch_images = Histogram(
            "rotmnist_batch_images", "Images per scoring request.", buckets=IMAGES_BUCKETS, registry=r
        )
        self.predictions = Counter("rotmnist_predictions", "Images scored, by predicted digit.", ["digit"], registry=r)
        self.top_probability = _BatchHistogram(
            "rotmnist_top_probability", "The predicted digit's probability, per scored image.", PROBABILITY_BUCKETS
        )
        self.input_tilt = _BatchHistogram(
            "rotmnist_input_tilt_degrees",
            "Estimated tilt of each scored image with ink, degrees counter-clockwise from upright.",
            TILT_BUCKETS,
        )
        self._scraped = _ScrapeTime([self.top_probability, self.input_tilt])
        r.register(self._scraped)

    def bind_model(self, read: Callable[[], Mapping[str, Any]]) -> None:
        """Report the model `read()` describes (its "name" and "version"), asked at each scrape.

        E.g. `lambda: keeper.served.info.model_dump()`: a hot swap, by the poll or `POST /reload`, shows at the
        next scrape.
        """
        self._scraped.read_model = read

    def bind_log(self, read: Callable[[], Mapping[str, int]]) -> None:
        """Report the request log's running totals, `read()` at each scrape (e.g. `request_log.counts`): rows
        "written" and "dropped", "corrections" and "disagreements"; other keys are ignored. Absent while unbound."""
        self._scraped.read_log = read

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request under its route template and status, and its duration."""
        self.requests.labels(route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def observe_batch(self, x: np.ndarray, probs: np.ndarray, sizes: list[int] | None = None) -> None:
        """Record a scored batch of requests: each request's size (`sizes`, summing to N; default: one request
        of all N), each image's
        predicted digit and top probability, and the tilt of each image with ink. `x` is (N, 28, 28), pixels
        0-255; `probs` is (N, 10). Vectorised over the batch: safe and cheap to call in a worker thread."""
        probs = np.asarray(probs)
        for size in [len(x)] if sizes is None else sizes:
            self.batch_images.observe(size)
        if len(x) == 0:
            return
        for digit, count in enumerate(np.bincount(probs.argmax(axis=1), minlength=probs.shape[1]).tolist()):
            if count:
                self.predictions.labels(str(digit)).inc(count)
        self.top_probability.observe(probs.max(axis=1))
        inked = ink_mass(x) > 0  # a blank image has no axis to tilt
        self.input_tilt.observe(tilt_degrees(x[inked]))

    def render(self) -> tuple[bytes, str]:
        """The exposition for `GET /metrics`: the body and its content type (Prometheus text format 0.0.4)."""
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4


class _ScrapeTime:
    """The metrics computed when scraped: the per-image histograms, the served model, the request log's counts."""

    def __init__(self, histograms: list[_BatchHistogram]):
        self.histograms = histograms
        self.read_model: Callable[[], Mapping[str, Any]] = dict
        self.read_log: Callable[[], Mapping[str, int]] | None = None

    def describe(self) -> list[Metric]:  # the names, so the registry refuses a second metric of the same name
        return [
            *(HistogramMetricFamily(h.name, "") for h in self.histograms),
            InfoMetricFamily("rotmnist_model", ""),
            *(CounterMetricFamily(name, "") for name, _ in LOG_COUNTS.values()),
        ]

    def collect(self) -> Iterator[Metric]:
        for h in self.histograms:
            yield h.family()
        yield self._model()
        yield from self._log_counts()

    def _model(self) -> InfoMetricFamily:
        info = self.read_model()
        labels = {key: "" if info.get(key) is None else str(info[key]) for key in ("name", "version")}
        return InfoMetricFamily("rotmnist_model", "The model being served: registered name and version.", labels)

    def _log_counts(self) -> Iterator[Metric]:
        read = self.read_log
        if read is None:
            return
        try:
            counts = read()
            values = {key: float(counts[key]) for key in LOG_COUNTS}
        except Exception as err:  # a scrape must not fail because the log could not say
            log.warning("/metrics: the request log's counts are unavailable (%s: %s)", type(err).__name__, err)
            return
        for key, (name, documentation) in LOG_COUNTS.items():
            yield CounterMetricFamily(name, documentation, value=values[key])


class RequestMetrics:
    """ASGI middleware: count each HTTP request by route template and status, and time it, into `telemetry`.

    Add it last (`app.add_middleware(RequestMetrics, telemetry=...)`): outermost, it also counts the answers
    of the middlewares inside it (a 413 from `BodyLimit`). A request whose handler raises counts as 500.
    """

    def __init__(self, app: ASGIApp, telemetry: Telemetry):
        self.app, self.telemetry = app, telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        arrived, status, start = dict(scope), 500, time.perf_counter()  # the scope as routing will first see it

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            self.telemetry.observe_request(route_of(scope, arrived), status, time.perf_counter() - start)


def route_of(scope: Scope, arrived: Scope) -> str:
    """The path template of the request's route, once the app has answered it, or `OTHER_ROUTE`.

    The router records the route it dispatched to in `scope["route"]` (a path match with another method
    too: 405). FastAPI records only its API routes, so a request it did not record (for a mount such as the
    docs' files, for no route at all, or answered before routing, as BodyLimit's 413 is) is matched once
    against the app's routes, as it `arrived` (dispatch changes the scope's paths).
    """
    route = scope.get("route")
    if route is None:
        route = _match(getattr(scope.get("app"), "routes", ()), arrived)
    return getattr(route, "path", None) or OTHER_ROUTE


def _match(routes: Iterable[BaseRoute], scope: Scope) -> BaseRoute | None:
    """The route the router dispatches `scope` to: the first that fully matches, else the first that matches
    the path only (405)."""
    partial = None
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            return child.get("route", route)
        if match is Match.PARTIAL and partial is None:
            partial = child.get("route", route)
    return partial
