"""Reading the requests of `rotmnist serve` and writing its answers, with the refusals a client can act on.

Every refusal is an `HTTPProblem`: a status and a message that never echoes the payload. JSON batches
are 28x28 pixels 0-255; image files are prepared the way MNIST was made (`rotmnist.data.images`, shared
with `predict`). The routes publish what they read and answer in OpenAPI terms (`SCORE_BODY`,
`SCORE_RESPONSES`, ..., and the JSON Schemas of `schemas`), kept here beside the parser they describe:
the handlers read raw bodies themselves, so FastAPI cannot infer them.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from starlette.responses import Response

from rotmnist.data.images import ImageTooLarge, decode_files, pixel_problem
from rotmnist.errors import PipelineError
from rotmnist.spec import IMAGE_SHAPE

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.types import ASGIApp, Receive, Scope, Send

    from rotmnist.config import ServeConfig
    from rotmnist.serving.model_source import Served

log = logging.getLogger(__name__)

INLINE_BYTES = 64 * 1024  # JSON bodies up to this size are parsed on the event loop; larger ones in a thread
RAW_TYPE, NPY_TYPE = "application/octet-stream", "application/x-npy"  # `/score`'s binary bodies for bulk clients
_IMAGE_BYTES = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]


class HTTPProblem(Exception):
    """A request the service refuses: `status` and a message that never echoes the payload."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 (by its Content-Length, or while streaming).

    The rest of a refused body is read and dropped (up to 4x the limit) before answering, so that the
    client, still sending, reads the 413 instead of a reset connection. Starlette's own limit
    (`max_body_size`, RequestBodyLimitMiddleware) drains nothing and answers a text/plain 413, where the
    published schema promises the JSON problem body.
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
    """The request's Content-Type without its parameters, lower case ("" when absent)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def parse_json(body: bytes) -> Any:
    """The JSON of a request body; 400 if it is not JSON.

    orjson reads UTF-8 JSON several times faster than the standard library; what it refuses (NaN or
    Infinity, UTF-16 or UTF-32 text, nesting past 1,024) goes to `json.loads`, so only a body neither
    reads is refused. One difference remains: orjson reads an integer beyond 64 bits as a float (no pixel,
    label or count is that large, so it is refused as out of range rather than as not a number).
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise HTTPProblem(400, "the body is not valid JSON") from None


def json_answer(content: Any) -> Response:
    """A 200 JSON answer written by orjson (numpy arrays as lists of numbers, without `tolist`)."""
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def image_batch(data: Any, what: str, max_images: int, maybe_bools: bool = True) -> np.ndarray:
    """A JSON array of 28x28 images (pixels 0-255) as float32 (N, 28, 28); 422 naming the problem, 413 if too many.

    `maybe_bools=False` (the JSON text holds no `true`/`false`) skips the scan for booleans among numbers,
    which numpy would otherwise read as pixels 1 and 0.
    """
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
    if maybe_bools and bool in set(map(type, chain.from_iterable(chain.from_iterable(data)))):
        raise HTTPProblem(422, f"{what} must hold numbers only (pixel values 0-255), not true or false")
    return _checked(x, what, max_images)  # counted above already: refused with 413 before the scan for booleans


def score_images(body: bytes, max_images: int) -> np.ndarray:
    """The images of a `/score` JSON body `{"images": [...]}`."""
    data = parse_json(body)
    if not isinstance(data, dict) or "images" not in data:
        raise HTTPProblem(422, 'expected a JSON object {"images": [...]} of 28x28 images')
    return image_batch(data["images"], "images", max_images, _may_hold_bools(body))


def invocation_images(body: bytes, max_images: int) -> np.ndarray:
    """The images of an `/invocations` JSON body: MLflow's `{"inputs": [...]}` or `{"instances": [...]}`."""
    data = parse_json(body)
    if not isinstance(data, dict) or not ({"inputs", "instances"} & set(data)):
        raise HTTPProblem(422, 'expected {"inputs": [...]} or {"instances": [...]} of 28x28 images')
    key = "inputs" if "inputs" in data else "instances"
    return image_batch(data[key], key, max_images, _may_hold_bools(body))


def raw_images(body: bytes, max_images: int) -> np.ndarray:
    """The images of an `application/octet-stream` body: N 28x28 images of uint8 pixels, row by row, back to back."""
    if not body or len(body) % _IMAGE_BYTES:  # 400, as bytes that are not an image file: no schema can say it
        raise HTTPProblem(
            400, f"an {RAW_TYPE} body is N x {_IMAGE_BYTES} bytes (28x28 uint8 pixels per image), got {len(body)}"
        )
    return _checked(np.frombuffer(body, np.uint8).reshape(-1, *IMAGE_SHAPE), "the body", max_images)


def npy_images(body: bytes, max_images: int) -> np.ndarray:
    """The images of an `application/x-npy` body: a NumPy .npy array (N, 28, 28), or one (28, 28) image, of integer
    or float pixels 0-255 (no pickled objects)."""
    try:
        x = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, EOFError, OSError):  # not .npy, truncated, or an object array
        raise HTTPProblem(400, f"the body is not a NumPy .npy file of numbers ({NPY_TYPE})") from None
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "uif":
        raise HTTPProblem(422, "the .npy array must hold numbers only (pixel values 0-255)")
    if x.shape == IMAGE_SHAPE:
        x = x[None]
    if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE or not len(x):
        raise HTTPProblem(422, f"the .npy array must have shape (N, 28, 28) or (28, 28), got {x.shape}")
    return _checked(x, "the .npy array", max_images)


def _checked(x: np.ndarray, what: str, max_images: int) -> np.ndarray:
    """`x` (N, 28, 28) as float32 if it is at most `max_images` images of pixels 0-255; 413 or 422 if not."""
    if len(x) > max_images:
        raise HTTPProblem(413, f"{what} holds {len(x)} images, over serve.max_images ({max_images})")
    problem = pixel_problem(x)
    if problem:
        raise HTTPProblem(422, f"{what}: {problem}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _may_hold_bools(body: bytes) -> bool:
    """Whether a JSON body could hold `true` or `false` (a byte search: most bodies skip the scan for them).

    A body that is not ASCII may be UTF-16 or UTF-32 JSON (which `json.loads` reads), where the search finds nothing.
    """
    return not body.isascii() or b"true" in body or b"false" in body


async def off_loop(parse: Callable[[bytes, int], Any], body: bytes, max_images: int) -> Any:
    """`parse(body, max_images)`, in a worker thread when the body is over INLINE_BYTES (a hop costs more below)."""
    if len(body) <= INLINE_BYTES:
        return parse(body, max_images)
    return await asyncio.to_thread(parse, body, max_images)


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
    try:
        return await asyncio.to_thread(decode_files, files, settings.max_image_pixels)  # off the event loop
    except ImageTooLarge as err:
        raise HTTPProblem(413, str(err)) from None
    except PipelineError as err:  # names the file that does not decode
        raise HTTPProblem(400, str(err)) from None


def score_answer(probs: np.ndarray, served: Served, names: list[str] | None = None) -> dict[str, Any]:
    """The `/score` answer: the model's name and version, and per image the digit and the ten probabilities."""
    digits = probs.argmax(axis=1)
    rows = []
    for i, (d, p) in enumerate(zip(digits.tolist(), np.round(probs.astype(float), 6).tolist(), strict=True)):
        row = {"digit": d, "probability": p[d], "probabilities": p}
        if names:
            row = {"name": names[i]} | row
        rows.append(row)
    return {"model": {"name": served.info.name, "version": served.version}, "predictions": rows}
