"""The HTTP service of `rotmnist serve`: a FastAPI app scoring digits with one hot-swappable model.

- `POST /score`: a JSON batch `{"images": [...]}` of 28x28 pixels 0-255, or image files (multipart upload
  or one raw `image/*` body) prepared the way MNIST was made (`rotmnist.data.images`, shared with `predict`).
- `POST /invocations`: MLflow's scoring protocol (`{"inputs": ...}` -> `{"predictions": ...}`).
- `GET /health`, `GET /version`, `POST /reload`, and `GET /`: a page to draw or upload a digit.

Concurrent requests are scored together: one worker thread runs the model on everything that queued while
its previous forward pass ran (`serve.batch_images` at most), so ten clients cost about one forward pass
each round instead of ten. A new champion is loaded beside the old one and swapped in by one assignment;
a batch already running finishes on the model it started with, so no request in flight is dropped.
Imports no training code.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import ClientDisconnect, Request  # at run time: FastAPI reads the endpoints' annotations

from rotmnist.data.images import ImageTooLarge, read_image
from rotmnist.errors import PipelineError, first_line
from rotmnist.io import IMAGE_SHAPE, pixel_problem
from rotmnist.tracking import registry

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Receive, Scope, Send

    from rotmnist.config import ServeConfig

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("static") / "index.html"
INLINE_BYTES = 64 * 1024  # JSON bodies up to this size are parsed on the event loop; larger ones in a thread


class HTTPProblem(Exception):
    """A request the service refuses: `status` and a message that never echoes the payload."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ---- the model being served ------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """One loaded model version: its scoring function and what `/version` says about it."""

    proba: Callable[[np.ndarray], np.ndarray]  # float32 (N, 28, 28) 0-255 -> (N, 10) probabilities
    info: dict[str, Any]

    @property
    def version(self) -> str | None:
        return self.info.get("version")


def fast_scorer(clf: registry.Classifier) -> Callable[[np.ndarray], np.ndarray]:
    """The classifier's torch module called directly (no pyfunc schema round trip), else its predict_proba."""
    import torch

    raw = clf.model.get_raw_model() if hasattr(clf.model, "get_raw_model") else None
    if not isinstance(raw, torch.nn.Module):
        return clf.predict_proba

    def proba(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return raw(torch.from_numpy(x)).numpy()

    return proba


class ModelSource:
    """Where the served model comes from: `models:/<name>@champion` (polled for a new version), or a fixed URI."""

    def __init__(self, model_name: str, uri: str | None = None):
        self.model_name = model_name
        self.uri = uri

    @property
    def follows_champion(self) -> bool:
        return self.uri is None

    def _client(self):
        from mlflow import MlflowClient

        return MlflowClient()

    def champion(self) -> str | None:
        """The version the champion alias points to now (None if there is none)."""
        v = registry.champion_version(self._client(), self.model_name)
        return str(v.version) if v is not None else None

    def load_initial(self) -> Served:
        """The champion with the registry's fallback (or the fixed URI); PipelineError if nothing loads."""
        if self.follows_champion:
            clf = registry.load_champion(self.model_name, client=self._client())
            return self._served(clf, self.model_name, clf.version, registry.CHAMPION)
        return self._served(registry.load_model(self.uri), *self._name_version(self.uri))

    def load(self, version: str | None) -> Served:
        """Champion `version` exactly (no fallback: a reload that fails keeps the old model), or the fixed URI."""
        if self.follows_champion:
            clf = registry.load_model(f"models:/{self.model_name}/{version}", version)
            return self._served(clf, self.model_name, version, registry.CHAMPION)
        return self.load_initial()

    def _name_version(self, uri: str) -> tuple[str | None, str | None, str | None]:
        """Name, version and alias of a `models:/` URI (resolved through the registry), else Nones."""
        if not uri.startswith("models:/"):
            return None, None, None
        ref = uri.removeprefix("models:/")
        if "@" in ref:
            name, alias = ref.split("@", 1)
            v = self._client().get_model_version_by_alias(name, alias)
            return name, str(v.version), alias
        name, _, version = ref.partition("/")
        return name, version or None, None

    def _served(self, clf: registry.Classifier, name: str | None, version: str | None, alias: str | None) -> Served:
        info: dict[str, Any] = {"uri": clf.uri, "name": name, "version": version, "alias": alias}
        info |= {"training_run_id": None, "holdout_accuracy": None, "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if name and version:
            mv = self._client().get_model_version(name, version)
            info["training_run_id"] = mv.tags.get("training_run_id") or mv.run_id
            acc = mv.tags.get("holdout_accuracy")
            info["holdout_accuracy"] = float(acc) if acc else None
        return Served(fast_scorer(clf), info)


@dataclass
class Keeper:
    """Holds the served model and swaps in a new champion; a failed load keeps the old one and is reported."""

    source: ModelSource
    served: Served
    reload_error: str | None = None
    failed_version: str | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def reload(self, retry_failed: bool = True) -> bool:
        """Load the champion's current version if it changed (the fixed URI: always); True if swapped.

        With `retry_failed` False (the poll) a champion version that already failed to load is not tried
        again until the alias moves; `POST /reload` retries it, e.g. after its artifacts were repaired.
        """
        async with self._lock:
            try:
                version = await asyncio.to_thread(self.source.champion) if self.source.follows_champion else None
                if self.source.follows_champion and version in (None, self.served.version):
                    self.reload_error = None if version else f"{self.source.model_name} has no champion now"
                    self.failed_version = None
                    return False
                if not retry_failed and version is not None and version == self.failed_version:
                    return False
                new = await asyncio.to_thread(self.source.load, version)
            except Exception as err:  # any failure keeps the old model serving
                message = f"{type(err).__name__}: {first_line(err)}"
                if message != self.reload_error:
                    log.warning("could not load the new model (%s); still serving %s", message, self.describe())
                self.reload_error, self.failed_version = message, (version if self.source.follows_champion else None)
                return False
            old = self.describe()
            self.served, self.reload_error, self.failed_version = new, None, None
            log.info("now serving %s (was %s)", self.describe(), old)
            return True

    async def poll(self, seconds: float) -> None:
        """Check the champion alias every `seconds` for as long as the app runs."""
        while True:
            await asyncio.sleep(seconds)
            await self.reload(retry_failed=False)

    def describe(self) -> str:
        i = self.served.info
        return f"{i['name']} version {i['version']}" if i["version"] else i["uri"]


# ---- batching concurrent requests ------------------------------------------------------------------


@dataclass
class _Job:
    x: np.ndarray
    future: asyncio.Future


class Batcher:
    """Scores requests on one worker thread, running together everything that queued meanwhile."""

    def __init__(self, keeper: Keeper, max_images: int, wait_s: float = 0.0, threads: int = 1):
        self.keeper, self.max_images, self.wait_s, self.threads = keeper, max_images, wait_s, threads
        self._jobs: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="score", initializer=self._init_thread)
        self._task: asyncio.Task | None = None

    def _init_thread(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        self._pool.shutdown(wait=True)

    async def score(self, x: np.ndarray) -> tuple[np.ndarray, Served]:
        """Probabilities (N, 10) for `x`, and the model version that computed them."""
        job = _Job(x, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._wake.set()
        return await job.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.wait_s:
                await asyncio.sleep(self.wait_s)
            while self._jobs:
                batch = [self._jobs.popleft()]
                n = len(batch[0].x)
                while self._jobs and n + len(self._jobs[0].x) <= self.max_images:
                    batch.append(self._jobs.popleft())
                    n += len(batch[-1].x)
                served = self.keeper.served  # the whole batch runs on the model current now
                x = batch[0].x if len(batch) == 1 else np.concatenate([j.x for j in batch])
                try:
                    probs = await loop.run_in_executor(self._pool, served.proba, x)
                except Exception as err:
                    for j in batch:
                        if not j.future.done():
                            j.future.set_exception(err)
                    continue
                start = 0
                for j in batch:
                    if not j.future.done():
                        j.future.set_result((probs[start : start + len(j.x)], served))
                    start += len(j.x)


# ---- reading requests ------------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 (by its Content-Length, or while streaming).

    The rest of a refused body is read and dropped (up to 4x the limit) before answering, so that the
    client, still sending, reads the 413 instead of a reset connection.
    """

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.limit:
            if int(length) <= 4 * self.limit:
                await _drain(receive, 4 * self.limit)
            return await _send_problem(send, HTTPProblem(413, self._message()))
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                if message.get("more_body"):
                    await _drain(receive, 3 * self.limit)
                raise HTTPProblem(413, self._message())
            return message

        return await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"request body is over serve.max_body_bytes ({self.limit} bytes)"


async def _drain(receive: Receive, budget: int) -> None:
    """Read and drop what is left of a request body, at most about `budget` bytes."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return
        budget -= len(message.get("body", b""))


async def _send_problem(send: Send, problem: HTTPProblem) -> None:
    body = json.dumps({"error": problem.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def parse_json(body: bytes) -> Any:
    """The JSON of a request body; 400 if it is not JSON."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise HTTPProblem(400, "the body is not valid JSON") from None


def image_batch(data: Any, what: str, max_images: int) -> np.ndarray:
    """A JSON array of 28x28 images (pixels 0-255) as float32 (N, 28, 28); 422 naming the problem, 413 if too many."""
    if not isinstance(data, list):
        raise HTTPProblem(422, f"{what} must be a list of 28x28 images")
    if not data:
        raise HTTPProblem(422, f"{what} is empty: send at least one 28x28 image")
    try:
        x = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise HTTPProblem(422, f"{what} must be a list of 28x28 images of numbers (ragged or mixed lists)") from None
    if x.dtype.kind not in "uif":
        raise HTTPProblem(422, f"{what} must hold numbers only (pixel values 0-255)")
    if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
        raise HTTPProblem(422, f"{what} must have shape (N, 28, 28), got {x.shape}")
    if len(x) > max_images:
        raise HTTPProblem(413, f"{what} holds {len(x)} images, over serve.max_images ({max_images})")
    problem = pixel_problem(x)
    if problem:
        raise HTTPProblem(422, f"{what}: {problem}")
    return np.ascontiguousarray(x, dtype=np.float32)


async def uploaded_images(request: Request, settings: ServeConfig) -> tuple[list[str], np.ndarray]:
    """Image files of a multipart form (any field) or one raw `image/*` body, prepared as MNIST digits."""
    if media_type(request).startswith("image/"):
        files = [("image", await request.body())]
    else:
        try:
            form = await request.form(max_files=settings.max_images + 1, max_fields=settings.max_images + 1)
        except HTTPProblem:
            raise
        except Exception as err:  # python-multipart / starlette refusing a malformed or oversized form
            status = getattr(err, "status_code", 400)
            raise HTTPProblem(413 if status == 413 else 400, "the multipart form could not be parsed") from None
        files = [(v.filename or k, await v.read()) for k, v in form.multi_items() if hasattr(v, "read")]
    if not files:
        raise HTTPProblem(422, "no image file in the upload: send PNG or JPEG files in a multipart form")
    if len(files) > settings.max_images:
        raise HTTPProblem(413, f"{len(files)} files, over serve.max_images ({settings.max_images})")
    return await asyncio.to_thread(decode_files, files, settings.max_image_pixels)  # off the event loop


def decode_files(files: list[tuple[str, bytes]], max_pixels: int) -> tuple[list[str], np.ndarray]:
    """Names and MNIST-prepared images of uploaded files; HTTPProblem 413/400 for one too large or undecodable."""
    names, x = [], np.zeros((len(files), *IMAGE_SHAPE), np.float32)
    for i, (name, data) in enumerate(files):
        label = f"file {i + 1}"
        try:
            x[i] = read_image(io.BytesIO(data), name=label, max_pixels=max_pixels)
        except ImageTooLarge as err:
            raise HTTPProblem(413, str(err)) from None
        except PipelineError:
            raise HTTPProblem(400, f"{label} is not an image that can be decoded (PNG, JPEG, ...)") from None
        names.append(name)
    return names, x


async def off_loop(parse: Callable[[], Any], size: int) -> Any:
    """`parse()`, in a worker thread when the body is over INLINE_BYTES (a thread hop costs more on small ones)."""
    return parse() if size <= INLINE_BYTES else await asyncio.to_thread(parse)


def score_answer(probs: np.ndarray, served: Served, names: list[str] | None = None) -> dict[str, Any]:
    """The `/score` answer: the model's name and version, and per image the digit and the ten probabilities."""
    digits = probs.argmax(axis=1)
    rows = []
    for i, (d, p) in enumerate(zip(digits.tolist(), np.round(probs.astype(float), 6).tolist(), strict=True)):
        row = {"digit": d, "probability": p[d], "probabilities": p}
        if names:
            row = {"name": names[i]} | row
        rows.append(row)
    return {"model": {"name": served.info["name"], "version": served.version}, "predictions": rows}


# ---- the app ---------------------------------------------------------------------------------------


def create_app(keeper: Keeper, settings: ServeConfig) -> FastAPI:
    """The FastAPI app serving `keeper`'s model with the limits and batching of `settings`."""
    import contextlib

    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    batcher = Batcher(keeper, settings.batch_images, settings.batch_wait_ms / 1000, settings.threads)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        poller = None
        if keeper.source.follows_champion and settings.poll_seconds > 0:
            poller = asyncio.get_running_loop().create_task(keeper.poll(settings.poll_seconds))
        try:
            yield
        finally:
            if poller:
                poller.cancel()
            await batcher.stop()

    app = FastAPI(title="rotmnist", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, err: HTTPProblem) -> Response:
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, err: ClientDisconnect) -> Response:  # nobody reads this answer
        return JSONResponse({"error": "the client closed the connection mid-request"}, status_code=400)

    async def scored(x: np.ndarray) -> tuple[np.ndarray, Served]:
        try:
            return await batcher.score(x)
        except Exception as err:
            log.exception("scoring failed")
            raise HTTPProblem(503, f"the model failed to score the images ({type(err).__name__})") from None

    @app.post("/score")
    async def score(request: Request) -> Response:
        kind = media_type(request)
        names = None
        if kind == "application/json":
            body = await request.body()

            def parse() -> np.ndarray:
                data = parse_json(body)
                if not isinstance(data, dict) or "images" not in data:
                    raise HTTPProblem(422, 'expected a JSON object {"images": [...]} of 28x28 images')
                return image_batch(data["images"], "images", settings.max_images)

            x = await off_loop(parse, len(body))
        elif kind == "multipart/form-data" or kind.startswith("image/"):
            names, x = await uploaded_images(request, settings)
        else:
            raise HTTPProblem(415, "send application/json, multipart/form-data (image files) or an image/* body")
        probs, served = await scored(x)
        return JSONResponse(score_answer(probs, served, names))

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        if media_type(request) != "application/json":
            raise HTTPProblem(415, 'send application/json: {"inputs": [...]} (MLflow\'s tensor input)')
        body = await request.body()

        def parse() -> np.ndarray:
            data = parse_json(body)
            if not isinstance(data, dict) or not ({"inputs", "instances"} & set(data)):
                raise HTTPProblem(422, 'expected {"inputs": [...]} or {"instances": [...]} of 28x28 images')
            key = "inputs" if "inputs" in data else "instances"
            return image_batch(data[key], key, settings.max_images)

        probs, _ = await scored(await off_loop(parse, len(body)))
        return JSONResponse({"predictions": probs.astype(float).tolist()})

    @app.get("/health")
    async def health() -> Response:
        body: dict[str, Any] = {"status": "ok", "model": keeper.describe(), "version": keeper.served.version}
        if keeper.reload_error:
            body |= {"status": "stale", "reload_error": keeper.reload_error, "failed_version": keeper.failed_version}
        return JSONResponse(body)

    @app.get("/version")
    async def version() -> Response:
        return JSONResponse(keeper.served.info)

    @app.post("/reload")
    async def reload() -> Response:
        swapped = await keeper.reload()
        status = 200 if keeper.reload_error is None else 503
        return JSONResponse(
            {"reloaded": swapped, "version": keeper.served.version, "error": keeper.reload_error}, status_code=status
        )

    page_html = PAGE.read_text()

    @app.get("/", response_class=HTMLResponse)
    async def page() -> Response:
        return HTMLResponse(page_html)

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app
