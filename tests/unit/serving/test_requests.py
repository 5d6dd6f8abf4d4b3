"""Reading the service's requests and writing its answers, in process: no server, no MLflow."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from rotmnist.config import ServeConfig
from rotmnist.serving.app import create_app
from rotmnist.serving.model_source import Served
from rotmnist.serving.openapi import ModelInfo
from rotmnist.serving.requests import (
    INLINE_BYTES,
    BodyLimit,
    HTTPProblem,
    image_batch,
    invocation_images,
    json_answer,
    npy_images,
    off_loop,
    parse_json,
    raw_images,
    score_answer,
    score_images,
)
from tests.support.serving import asgi

LIMIT = 1024
BLANK = [[0] * 28] * 28


def refused(call, *args) -> tuple[int, str]:
    with pytest.raises(HTTPProblem) as err:
        call(*args)
    return err.value.status, err.value.message


def one_hot(x: np.ndarray) -> np.ndarray:
    """A fake model: the digit is the first pixel's value mod 10, with probability 0.91."""
    probs = np.full((len(x), 10), 0.01, np.float32)
    probs[np.arange(len(x)), x[:, 0, 0].astype(int) % 10] = 0.91
    return probs


def fake_app(**settings):
    keeper = SimpleNamespace(served=Served(one_hot, ModelInfo(uri="models:/digits/7", name="digits", version="7")))
    keeper.source = SimpleNamespace(follows_champion=False)
    return create_app(keeper, ServeConfig(poll_seconds=0, **settings))


async def in_lifespan(app, *calls) -> list[tuple[int, dict, int]]:
    """Run the requests `calls` (arguments of `asgi`) while the app's lifespan (its batcher) runs."""
    async with app.router.lifespan_context(app):
        return [await asgi(app, *c) for c in calls]


# ---- JSON batches -----------------------------------------------------------------------------------


def test_a_json_batch_becomes_contiguous_float32_images():
    x = image_batch([BLANK, [[255] * 28] * 28], "images", max_images=2)
    assert x.shape == (2, 28, 28) and x.dtype == np.float32 and x.flags.c_contiguous
    assert x[0].max() == 0 and x[1].min() == 255


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        ({"a": 1}, 422, "images must be a list of 28x28 images"),
        ([], 422, "images is empty: send at least one 28x28 image"),
        ([BLANK, [[0] * 28] * 27], 422, "images must be a list of 28x28 images of numbers (ragged or mixed lists)"),
        ([[["a"] * 28] * 28], 422, "images must hold numbers only (pixel values 0-255)"),
        ([[[0] * 27] * 28], 422, "images must have shape (N, 28, 28), got (1, 28, 27)"),
        ([[0] * 28] * 28, 422, "images must have shape (N, 28, 28), got (28, 28)"),
        ([BLANK] * 3, 413, "images holds 3 images, over serve.max_images (2)"),
        ([[[float("nan")] * 28] * 28], 422, "images: pixels hold NaN or infinite values"),
        ([[[256] * 28] * 28], 422, "images: pixels must be in 0..255, got values in [256, 256]"),
        ([[[-1] * 28] * 28], 422, "images: pixels must be in 0..255, got values in [-1, -1]"),
        ([[[0.5] * 28] * 28], 422, "images: pixels look scaled to [0, 1]; pass values in 0..255 (multiply by 255)"),
    ],
)
def test_a_bad_json_batch_is_refused_naming_the_problem(data, status, message):
    assert refused(image_batch, data, "images", 2) == (status, message)


def test_the_json_of_the_body_is_parsed_and_invalid_json_is_a_400():
    assert parse_json(b'{"images": [1]}') == {"images": [1]}
    for body in (b"{not json", b"\xff\xfe", b"[" * 100_000):  # bad syntax, not UTF-8, nested too deep
        assert refused(parse_json, body) == (400, "the body is not valid JSON")


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": [1, 2.5, -3]}',
        b'{"a": [NaN, Infinity, -Infinity]}',  # the json module's extensions: orjson refuses them
        '{"a": [1, 2.5, -3]}'.encode("utf-16"),
        '{"a": [1, 2.5, -3]}'.encode("utf-32"),
    ],
)
def test_a_body_means_what_the_json_module_reads_in_it(body):
    assert repr(parse_json(body)) == repr(json.loads(body))


def test_an_integer_beyond_64_bits_is_a_pixel_out_of_range():
    body = json.dumps({"images": [BLANK]}).replace("0", "18446744073709551616", 1).encode()
    assert refused(score_images, body, 4) == (
        422,
        "images: pixels must be in 0..255, got values in [0.0, 1.8446744073709552e+19]",
    )


def test_answers_are_the_json_of_their_content_with_numpy_arrays_as_lists():
    probs = np.array([[0.25, 1e-5], [1.0, 0.1]], np.float32)
    answer = json_answer({"predictions": probs.astype(np.float64), "ids": ["a", None]})
    assert answer.media_type == "application/json"
    assert json.loads(answer.body) == {"predictions": probs.astype(float).tolist(), "ids": ["a", None]}


def test_score_and_invocations_bodies_name_the_key_they_expect():
    assert score_images(json.dumps({"images": [BLANK]}).encode(), 4).shape == (1, 28, 28)
    assert refused(score_images, b'{"inputs": []}', 4) == (
        422,
        'expected a JSON object {"images": [...]} of 28x28 images',
    )
    assert invocation_images(json.dumps({"instances": [BLANK] * 2}).encode(), 4).shape == (2, 28, 28)
    assert refused(invocation_images, b'{"instances": [[[300]]]}', 4)[1].startswith("instances must have shape")
    assert refused(invocation_images, b"[1, 2]", 4) == (
        422,
        'expected {"inputs": [...]} or {"instances": [...]} of 28x28 images',
    )


def test_a_large_body_is_parsed_off_the_event_loop_and_a_small_one_on_it():
    threads = []

    def parse(body: bytes, max_images: int) -> int:
        threads.append(threading.get_ident())
        return len(body) + max_images

    async def scenario() -> list[int]:
        return [await off_loop(parse, b" " * n, 1) for n in (INLINE_BYTES, INLINE_BYTES + 1)]

    loop_thread = threading.get_ident()  # asyncio.run runs the loop in this thread
    assert asyncio.run(scenario()) == [INLINE_BYTES + 1, INLINE_BYTES + 2]
    assert threads[0] == loop_thread and threads[1] != loop_thread


# ---- answers ----------------------------------------------------------------------------------------


def test_the_score_answer_names_the_model_and_each_digit_with_probabilities_summing_to_1():
    logits = np.random.default_rng(0).normal(size=(3, 10))
    probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    served = Served(one_hot, ModelInfo(uri="models:/digits/4", name="digits", version="4"))
    answer = score_answer(probs, served, ["a.png", "b.png", "c.png"])
    assert answer["model"] == {"name": "digits", "version": "4"}
    rows = answer["predictions"]
    assert [list(r) for r in rows] == [["name", "digit", "probability", "probabilities"]] * 3
    assert [r["name"] for r in rows] == ["a.png", "b.png", "c.png"]
    assert [r["digit"] for r in rows] == probs.argmax(axis=1).tolist()
    for r in rows:
        assert len(r["probabilities"]) == 10 and sum(r["probabilities"]) == pytest.approx(1, abs=1e-5)
        assert r["probability"] == max(r["probabilities"])
    assert "name" not in score_answer(probs, served)["predictions"][0]  # a JSON batch has no file names


# ---- the body limit ---------------------------------------------------------------------------------


def test_a_body_over_the_limit_by_its_length_gets_413_without_reaching_the_app():
    reached = []

    async def inner(scope, receive, send):
        reached.append(scope["path"])

    app = BodyLimit(inner, LIMIT)
    status, answer, left = asyncio.run(asgi(app, [b"x" * 600] * 3, {"content-length": "1800"}))
    assert status == 413 and answer == {"error": f"request body is over serve.max_body_bytes ({LIMIT} bytes)"}
    assert reached == [] and left == 0  # the rest of the body was read, so the client sees the 413


def test_a_streamed_body_over_the_limit_gets_413_from_the_app():
    app = fake_app(max_body_bytes=LIMIT)
    chunks = [b"[" * 600] * 3  # no Content-Length: refused while streaming
    status, answer, _ = asyncio.run(asgi(app, chunks, {"content-type": "application/json"}))
    assert status == 413 and answer == {"error": f"request body is over serve.max_body_bytes ({LIMIT} bytes)"}


def test_a_body_within_the_limit_reaches_the_app_whole():
    async def echo(scope, receive, send):
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        answer = json.dumps({"bytes": len(body)}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": answer})

    app = BodyLimit(echo, LIMIT)
    assert asyncio.run(asgi(app, [b"x" * 512] * 2, {"content-length": "1024"})) == (200, {"bytes": 1024}, 0)
    assert asyncio.run(asgi(app, [b"x" * 512] * 2, {})) == (200, {"bytes": 1024}, 0)


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def test_a_raw_body_is_uint8_images_back_to_back():
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    x = raw_images(images.tobytes(), LIMIT)
    assert x.dtype == np.float32 and x.flags.c_contiguous and np.array_equal(x, images)
    assert refused(raw_images, images.tobytes()[:-1], LIMIT) == (
        400,
        "an application/octet-stream body is N x 784 bytes (28x28 uint8 pixels per image), got 2351",
    )
    assert refused(raw_images, b"", LIMIT)[0] == 400
    assert refused(raw_images, images.tobytes(), 2) == (413, "the body holds 3 images, over serve.max_images (2)")
    scaled = np.zeros((1, 28, 28), np.uint8)
    scaled[0, 5, 5] = 1
    assert refused(raw_images, scaled.tobytes(), LIMIT) == (
        422,
        "the body: pixels look scaled to [0, 1]; pass values in 0..255 (multiply by 255)",
    )


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float32, ">f8"])
def test_an_npy_body_is_a_batch_or_one_image_of_any_numeric_type(dtype):
    images = np.random.default_rng(1).integers(0, 256, (2, 28, 28)).astype(dtype)
    x = npy_images(npy(images), LIMIT)
    assert x.dtype == np.float32 and x.flags.c_contiguous and np.array_equal(x, images.astype(np.float32))
    assert np.array_equal(npy_images(npy(images[0]), LIMIT), x[:1])


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"\x93NUMPY not really", 400, "the body is not a NumPy .npy file of numbers (application/x-npy)"),
        (npy(np.array([{"pickled": 1}], dtype=object)), 400, "the body is not a NumPy .npy file of numbers"),
        (npy(np.zeros((2, 28, 28), bool)), 422, "the .npy array must hold numbers only (pixel values 0-255)"),
        (npy(np.zeros((2, 28, 27))), 422, "the .npy array must have shape (N, 28, 28) or (28, 28), got (2, 28, 27)"),
        (npy(np.zeros((0, 28, 28))), 422, "the .npy array must have shape (N, 28, 28) or (28, 28), got (0, 28, 28)"),
        (npy(np.full((1, 28, 28), 256.0)), 422, "the .npy array: pixels must be in 0..255"),
        (npy(np.full((1, 28, 28), np.nan)), 422, "the .npy array: pixels hold NaN or infinite values"),
        (npy(np.zeros((1025, 28, 28), np.uint8)), 413, "the .npy array holds 1025 images, over serve.max_images"),
    ],
)
def test_a_bad_npy_body_is_refused_naming_the_problem(body, status, message):
    got_status, got_message = refused(npy_images, body, LIMIT)
    assert got_status == status and got_message.startswith(message)


# ---- the routes, in process -------------------------------------------------------------------------


def test_the_routes_score_json_and_refuse_what_they_cannot_read():
    json_type = {"content-type": "application/json"}
    images = json.dumps({"images": [[[3] * 28] * 28, BLANK]}).encode()
    inputs = json.dumps({"inputs": [[[9] * 28] * 28]}).encode()
    answers = asyncio.run(
        in_lifespan(
            fake_app(max_images=4),
            ([images], json_type),
            ([inputs], json_type, "/invocations"),
            ([b"digits"], {"content-type": "text/plain"}),
            ([b"not a png"], {"content-type": "image/png"}),
            ([b"{"], json_type),
            ([np.full((2, 28, 28), 3, np.uint8).tobytes()], {"content-type": "application/octet-stream"}),
            ([npy(np.full((28, 28), 9.0))], {"content-type": "application/x-npy"}),
        )
    )
    (status, score, _), (_, invoked, _), unsupported, undecodable, bad_json, raw, array = answers
    assert raw[0] == 200 and [p["digit"] for p in raw[1]["predictions"]] == [3, 3]
    assert array[0] == 200 and [p["digit"] for p in array[1]["predictions"]] == [9]
    assert status == 200 and score["model"] == {"name": "digits", "version": "7"}
    assert [p["digit"] for p in score["predictions"]] == [3, 0]
    assert np.argmax(invoked["predictions"][0]) == 9 and len(invoked["predictions"][0]) == 10
    assert unsupported[:2] == (
        415,
        {
            "error": "send application/json, application/octet-stream, application/x-npy, "
            "multipart/form-data (image files) or an image/* body"
        },
    )
    assert undecodable[:2] == (400, {"error": "file 1 is not an image that can be decoded (PNG, JPEG, ...)"})
    assert bad_json[:2] == (400, {"error": "the body is not valid JSON"})


# ---- the served model -------------------------------------------------------------------------------


def test_version_answers_the_model_info_fields_only_as_the_schema_publishes_them():
    app = fake_app()
    [(status, info, _)] = asyncio.run(in_lifespan(app, ([], {}, "/version", "GET")))
    assert status == 200
    assert info == {
        "uri": "models:/digits/7",
        "name": "digits",
        "version": "7",
        "alias": None,
        "training_run_id": None,
        "holdout_accuracy": None,
        "loaded_at": info["loaded_at"],
    }
    doc = app.openapi()
    answer = doc["paths"]["/version"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/ModelInfo"}
    validator = Draft202012Validator(answer | {"components": doc["components"]})
    validator.validate(info)
    assert not validator.is_valid(info | {"source_path": "/srv/model"})  # no key beyond the published ones
    assert not validator.is_valid({k: v for k, v in info.items() if k != "alias"})  # each one always there
