"""The HTTP service of `rotmnist serve`: a FastAPI app scoring digits with one hot-swappable model.

- `POST /score`: a JSON batch `{"images": [...]}` of 28x28 pixels 0-255, or image files (multipart upload
  or one raw `image/*` body) prepared the way MNIST was made (`rotmnist.data.images`, shared with `predict`).
- `POST /invocations`: MLflow's scoring protocol (`{"inputs": ...}` -> `{"predictions": ...}`).
- `POST /feedback`: a person's correction `{"id": ..., "label": 0-9}` of a prediction in the request log.
- `GET /health`, `GET /version`, `POST /reload`, and `GET /`: a page to draw or upload a digit.
- The request log (`storage.request_log`): every scored image, its prediction and its id, written off the request
  path. `/score` answers each prediction's `id`; `/invocations` adds `ids` beside MLflow's `predictions`.
  Without a log (`serve.log_requests: false`) the answers carry no ids and `/feedback` answers 404.
- Tokens (`auth`): `POST /reload`, and scoring when `serve.require_token_for_scoring`, may need
  `Authorization: Bearer <token>`; the schema marks the routes that do.
- `GET /metrics`: Prometheus's text format (`metrics`): requests, latency, predictions, input tilt, the
  served model, the request log's counts; as open as scoring.
- `GET /openapi.json`: the API as the handlers really read and answer (the schemas live in `openapi`);
  `GET /docs`: Swagger UI on it, from the files of the `fastapi-offline` package, served by the app itself
  (the page loads nothing from another server).

The pieces live by job: the model and its hot reload in `model_source`, the micro-batching of concurrent
requests in `batcher`, reading requests and writing answers in `requests`, the request log in
`storage.request_log`, the metrics in `metrics`; this module wires them into routes. Imports no training code.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.requests import ClientDisconnect, Request  # at run time: FastAPI reads the endpoints' annotations

from rotmnist.serving.auth import SCHEME, Access
from rotmnist.serving.batcher import Batcher, Stopped
from rotmnist.serving.metrics import RequestMetrics, Telemetry
from rotmnist.serving.openapi import (
    FEEDBACK_BODY,
    FEEDBACK_RESPONSES,
    HEALTH_RESPONSES,
    ID_LENGTH,
    INVOCATIONS_BODY,
    INVOCATIONS_RESPONSES,
    RELOAD_RESPONSES,
    SCORE_BODY,
    SCORE_RESPONSES,
    UNAUTHORIZED_RESPONSE,
    VERSION_RESPONSES,
    schemas,
)
from rotmnist.serving.requests import (
    NPY_TYPE,
    RAW_TYPE,
    BodyLimit,
    HTTPProblem,
    invocation_images,
    json_answer,
    media_type,
    npy_images,
    off_loop,
    parse_json,
    raw_images,
    score_answer,
    score_images,
    uploaded_images,
)
from rotmnist.storage.request_store import LogUnavailable, Outcome

if TYPE_CHECKING:
    from rotmnist.config import ServeConfig
    from rotmnist.serving.model_source import Keeper, Served
    from rotmnist.storage.request_log import RequestLog

log = logging.getLogger(__name__)

BINARY_BODIES = {RAW_TYPE: raw_images, NPY_TYPE: npy_images}  # `/score`'s binary content types and their readers

PAGE = Path(__file__).with_name("static") / "index.html"
OPENAPI_URL = "/openapi.json"
DOCS_URL = "/docs"
ASSETS_URL = "/docs/static"  # Swagger UI's JavaScript, CSS and icon
SOURCE_HEADER = "x-rotmnist-source"  # `page` when the drawing page sent the image
NOT_LOGGED = "this server records no predictions (serve.log_requests is false), so none can be corrected"

# (path, method, endpoint, options of FastAPI.add_api_route), declared by `route` beside each handler
ROUTES: list[tuple[str, str, Callable[..., Any], dict[str, Any]]] = []


def route(method: str, path: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare the decorated handler a route of every app `create_app` builds.

    The routes are added to the app itself, not through an included router, so that each is a route of the
    app's own list: the one the request metrics match a request against when the router did not record it.
    """

    def declare(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        ROUTES.append((path, method, endpoint, options))
        return endpoint

    return declare


def create_app(
    keeper: Keeper, settings: ServeConfig, access: Access | None = None, log: RequestLog | None = None
) -> FastAPI:
    """The FastAPI app serving `keeper`'s model with the limits and batching of `settings`, its routes
    guarded by `access` (default: loopback without a token, every route open), recording what it scores
    in `log` (default: nothing recorded; `rotmnist serve` passes `RequestLog.from_settings`)."""
    app = FastAPI(
        title="rotmnist",
        summary="Scores handwritten digits, upright or rotated, with the registry's champion model.",
        lifespan=_lifespan,
        docs_url=None,  # our own /docs route: Swagger UI from the installed files, not a CDN
        redoc_url=None,
        openapi_url=OPENAPI_URL,
    )
    app.state.keeper, app.state.settings, app.state.access = keeper, settings, access or Access()
    app.state.log = log
    app.state.telemetry = telemetry = Telemetry()  # read at each scrape: the served model, the log's counts
    telemetry.bind_model(lambda: keeper.served.info.model_dump())
    if log is not None:
        telemetry.bind_log(log.counts)
    app.state.batcher = Batcher(
        keeper, settings.batch_images, settings.batch_wait_ms / 1000, settings.threads, observe=telemetry.observe_batch
    )
    app.state.page_html = PAGE.read_text()
    app.add_exception_handler(HTTPProblem, _problem)
    app.add_exception_handler(ClientDisconnect, _gone)
    for path, method, endpoint, options in ROUTES:
        app.add_api_route(path, endpoint, methods=[method], **options)
    app.mount(ASSETS_URL, StaticFiles(directory=assets_folder()), name="docs-assets")
    _publish(app, settings, app.state.access)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, telemetry=telemetry)  # outermost: it also counts the 413s
    return app


def _publish(app: FastAPI, settings: ServeConfig, access: Access) -> None:
    """Make `app.openapi()` the routes' schema with the components of `settings` and the routes `access`
    protects marked as needing the token (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            doc.setdefault("components", {}).setdefault("schemas", {}).update(schemas(settings))
            protected = [("/reload", access.protect_reload)]
            protected += [(path, access.protect_scoring) for path in ("/score", "/invocations", "/feedback")]
            if any(on for _, on in protected):
                doc["components"]["securitySchemes"] = {SCHEME: {"type": "http", "scheme": "bearer"}}
            for path, on in protected:
                if on:
                    operation = doc["paths"][path]["post"]
                    operation["security"] = [{SCHEME: []}]
                    operation["responses"]["401"] = UNAUTHORIZED_RESPONSE
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def assets_folder() -> Path:
    """Swagger UI's files as installed with the `fastapi-offline` package (found without importing it)."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the fastapi-offline package (Swagger UI's files) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run the batcher, the request log's writer, and the champion poll when the app follows the champion,
    while the app serves."""
    keeper: Keeper = app.state.keeper
    settings: ServeConfig = app.state.settings
    log: RequestLog | None = app.state.log
    app.state.batcher.start()
    if log is not None:
        log.start()
    poller = None
    if keeper.source.follows_champion and settings.poll_seconds > 0:
        poller = asyncio.get_running_loop().create_task(keeper.poll(settings.poll_seconds))
    try:
        yield
    finally:
        if poller:
            poller.cancel()
        await app.state.batcher.stop()
        if log is not None:
            await asyncio.to_thread(log.stop)  # writes what is still queued


async def _problem(request: Request, err: HTTPProblem) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse({"error": err.message}, status_code=err.status, headers=headers)


async def _gone(request: Request, err: ClientDisconnect) -> Response:  # nobody reads this answer
    return JSONResponse({"error": "the client closed the connection mid-request"}, status_code=400)


async def _scored(request: Request, x: np.ndarray) -> tuple[np.ndarray, Served]:
    """Probabilities of `x` from the app's batcher (which feeds the metrics); 503 if the model fails or the
    server is shutting down."""
    try:
        probs, served = await request.app.state.batcher.score(x)
    except Stopped:
        raise HTTPProblem(503, "the server is shutting down; try again") from None
    except Exception as err:
        log.exception("scoring failed")
        raise HTTPProblem(503, f"the model failed to score the images ({type(err).__name__})") from None
    return probs, served


@route(
    "POST",
    "/score",
    summary="Score a batch of digits",
    openapi_extra={"requestBody": SCORE_BODY},
    responses=SCORE_RESPONSES,
)
async def score(request: Request) -> Response:
    request.app.state.access.check(request, scoring=True)
    settings: ServeConfig = request.app.state.settings
    kind = media_type(request)
    names = None
    if kind == "application/json":
        x = await off_loop(score_images, await request.body(), settings.max_images)
    elif kind in BINARY_BODIES:
        x = await off_loop(BINARY_BODIES[kind], await request.body(), settings.max_images)
    elif kind == "multipart/form-data" or kind.startswith("image/"):
        names, x = await uploaded_images(request, settings)
    else:
        raise HTTPProblem(
            415, f"send application/json, {RAW_TYPE}, {NPY_TYPE}, multipart/form-data (image files) or an image/* body"
        )
    probs, served = await _scored(request, x)
    answer = score_answer(probs, served, names)
    source = "upload" if names is not None else "binary" if kind in BINARY_BODIES else "json"
    ids = _record(request, x, probs, served, "/score", source)
    if ids is not None:
        answer["predictions"] = [{"id": i} | p for i, p in zip(ids, answer["predictions"], strict=True)]
    return json_answer(answer)


@route(
    "POST",
    "/invocations",
    summary="Score digits with MLflow's protocol",
    openapi_extra={"requestBody": INVOCATIONS_BODY},
    responses=INVOCATIONS_RESPONSES,
)
async def invocations(request: Request) -> Response:
    request.app.state.access.check(request, scoring=True)
    if media_type(request) != "application/json":
        raise HTTPProblem(415, 'send application/json: {"inputs": [...]} (MLflow\'s tensor input)')
    x = await off_loop(invocation_images, await request.body(), request.app.state.settings.max_images)
    probs, served = await _scored(request, x)
    answer: dict[str, Any] = {"predictions": probs.astype(np.float64)}  # the float32 values, printed as doubles
    ids = _record(request, x, probs, served, "/invocations", "json")
    if ids is not None:
        answer["ids"] = ids  # beside MLflow's `predictions`, which its clients read
    return json_answer(answer)


def _record(
    request: Request, x: np.ndarray, probs: np.ndarray, served: Served, route: str, source: str
) -> list[str | None] | None:
    """Queue the scored images in the request log; their ids (None where dropped), or None without a log.

    `source` is `page` when the drawing page says it sent the image (the header X-Rotmnist-Source: page).
    """
    log: RequestLog | None = request.app.state.log
    if log is None:
        return None
    if request.headers.get(SOURCE_HEADER, "").strip().lower() == "page":
        source = "page"
    return log.record(x, probs, served.info.name or served.info.uri, served.version, route, source)


@route(
    "POST",
    "/feedback",
    summary="Correct a prediction: the digit it really was",
    openapi_extra={"requestBody": FEEDBACK_BODY},
    responses=FEEDBACK_RESPONSES,
)
async def feedback(request: Request) -> Response:
    request.app.state.access.check(request, scoring=True)
    if media_type(request) != "application/json":
        raise HTTPProblem(415, 'send application/json: {"id": "...", "label": 0-9}')
    id, label = read_correction(await request.body())
    log: RequestLog | None = request.app.state.log
    if log is None:
        raise HTTPProblem(404, NOT_LOGGED)
    try:
        done = await asyncio.to_thread(log.feedback, id, label)
    except LogUnavailable as err:
        raise HTTPProblem(503, f"the correction could not be stored now ({err}); try again") from None
    if done.outcome is Outcome.UNKNOWN:
        raise HTTPProblem(404, "no recorded prediction has this id (never recorded, or deleted by the retention)")
    if done.outcome is Outcome.CONFLICT:
        raise HTTPProblem(409, f"this prediction was corrected before (as {done.label})")
    return JSONResponse({"id": id, "label": label, "predicted": done.digit, "disagrees": done.disagrees})


def read_correction(body: bytes) -> tuple[str, int]:
    """The id and label of a `/feedback` body; 400 if it is not JSON, 422 if they are missing or wrong."""
    data = parse_json(body)
    if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not 0 < len(data["id"]) <= ID_LENGTH:
        raise HTTPProblem(
            422, f'expected {{"id": "...", "label": 0-9}} with the prediction\'s id (1-{ID_LENGTH} characters)'
        )
    label = data.get("label")
    # JSON Schema's integers include 7.0; true and false are not numbers
    if isinstance(label, bool) or not isinstance(label, int | float) or label not in range(10):
        raise HTTPProblem(422, "label must be an integer 0-9: the digit the image really was")
    return data["id"], int(label)


@route("GET", "/health", summary="Whether the service serves, and which model", responses=HEALTH_RESPONSES)
async def health(request: Request) -> Response:
    keeper: Keeper = request.app.state.keeper
    body: dict[str, Any] = {"status": "ok", "model": keeper.describe(), "version": keeper.served.version}
    if keeper.reload_error:
        body |= {"status": "stale", "reload_error": keeper.reload_error, "failed_version": keeper.failed_version}
    return JSONResponse(body)


@route("GET", "/version", summary="The served model", responses=VERSION_RESPONSES)
async def version(request: Request) -> Response:
    return JSONResponse(request.app.state.keeper.served.info.model_dump(mode="json"))


@route("POST", "/reload", summary="Load the champion now if it changed", responses=RELOAD_RESPONSES)
async def reload(request: Request) -> Response:
    request.app.state.access.check(request, scoring=False)
    keeper: Keeper = request.app.state.keeper
    swapped = await keeper.reload()
    status = 200 if keeper.reload_error is None else 503
    return JSONResponse(
        {"reloaded": swapped, "version": keeper.served.version, "error": keeper.reload_error}, status_code=status
    )


@route("GET", "/metrics", include_in_schema=False)  # Prometheus's text format, not part of the JSON API
async def metrics(request: Request) -> Response:
    request.app.state.access.check(request, scoring=True)  # traffic figures: as open as scoring
    await request.app.state.batcher.settled()  # every answered batch counted
    body, content_type = request.app.state.telemetry.render()
    return Response(body, media_type=content_type)


@route("GET", "/", response_class=HTMLResponse, include_in_schema=False)
async def page(request: Request) -> Response:
    return HTMLResponse(request.app.state.page_html)


@route("GET", DOCS_URL, include_in_schema=False)
async def docs(request: Request) -> Response:
    """Swagger UI on `/openapi.json`, every file from this server (under the app's root path, behind a proxy)."""
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(
        openapi_url=root + OPENAPI_URL,
        title="rotmnist API",
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},  # Swagger UI would ask validator.swagger.io for a badge
    )
