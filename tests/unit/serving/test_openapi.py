"""The published request schemas accept exactly what the parsers accept."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

from rotmnist.config import ServeConfig
from rotmnist.serving.app import assets_folder, read_correction
from rotmnist.serving.openapi import schemas
from rotmnist.serving.requests import HTTPProblem, invocation_images, score_images

MAX = 2
BLANK = [[0] * 28] * 28
SHORT = [[0] * 28] * 27
HOT = [[0] * 27 + [256]] + [[0] * 28] * 27
NEGATIVE = [[-1] + [0] * 27] + [[0] * 28] * 27
BOOLEAN = [[True] + [0] * 27] + [[0] * 28] * 27
TEXT = [["7"] + [0] * 27] + [[0] * 28] * 27
FLOATS = [[254.5] + [0.25] * 27] + [[0] * 28] * 27
SCALED = [[0.5] * 28] * 28  # pixels scaled to 0..1
UNIT_DOT = [[1.0] + [0] * 27] + [[0] * 28] * 27  # a blank image with one pixel at 1.0: within 0..1 too
INT_DOT = [[1] + [0] * 27] + [[0] * 28] * 27
JUST_OVER = [[1.001] + [0.5] * 27] + [[0] * 28] * 27


def valid(name: str, body) -> bool:
    doc = {"$ref": f"#/components/schemas/{name}", "components": {"schemas": schemas(ServeConfig(max_images=MAX))}}
    return Draft202012Validator(doc).is_valid(body)


def parsed(parse, body) -> bool:
    try:
        parse(json.dumps(body).encode(), MAX)
    except HTTPProblem:
        return False
    return True


@pytest.mark.parametrize(
    "body",
    [
        {"images": [BLANK]},
        {"images": [BLANK, FLOATS], "note": "extra keys are ignored"},
        {"images": [BLANK] * (MAX + 1)},
        {"images": []},
        {"images": [SHORT]},
        {"images": [HOT]},
        {"images": [NEGATIVE]},
        {"images": [BOOLEAN]},
        {"images": [TEXT]},
        {"images": BLANK},
        {"inputs": [BLANK]},
        [BLANK],
        {"images": [SCALED]},
        {"images": [UNIT_DOT]},
        {"images": [INT_DOT]},
        {"images": [BLANK, UNIT_DOT]},
        {"images": [JUST_OVER]},
        {"images": [SCALED, FLOATS]},  # the batch is judged as a whole: one pixel above 1 tells the scale
        {"images": [BLANK, BLANK]},
    ],
)
def test_the_score_schema_accepts_what_the_parser_accepts(body):
    assert valid("ScoreRequest", body) == parsed(score_images, body)


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": [BLANK]},
        {"instances": [BLANK]},
        {"inputs": [BLANK], "instances": [SHORT]},  # the parser reads `inputs` when both are there
        {"inputs": [SHORT], "instances": [BLANK]},
        {"inputs": [BLANK] * (MAX + 1)},
        {"instances": [HOT]},
        {"images": [BLANK]},
        {},
        {"inputs": [UNIT_DOT]},
        {"instances": [SCALED, HOT]},
        {"inputs": [SCALED, FLOATS]},
    ],
)
def test_the_invocations_schema_accepts_what_the_parser_accepts(body):
    assert valid("InvocationRequest", body) == parsed(invocation_images, body)


@pytest.mark.parametrize(
    "body",
    [
        {"id": "0f" * 16, "label": 7},
        {"id": "x", "label": 0, "note": "extra keys are ignored"},
        {"id": "x", "label": 9.0},  # JSON Schema's integers include 9.0
        {"id": "x" * 64, "label": 3},
        {"id": "x" * 65, "label": 3},
        {"id": "", "label": 3},
        {"id": 7, "label": 3},
        {"id": "x", "label": 10},
        {"id": "x", "label": -1},
        {"id": "x", "label": 2.5},
        {"id": "x", "label": True},
        {"id": "x", "label": "7"},
        {"id": "x"},
        {"label": 7},
        [{"id": "x", "label": 7}],
    ],
)
def test_the_feedback_schema_accepts_what_the_parser_accepts(body):
    assert valid("Feedback", body) == parsed(lambda raw, _: read_correction(raw), body)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-32"])
def test_true_and_false_among_the_pixels_are_refused_in_any_json_encoding(encoding):
    body = json.dumps({"images": [BOOLEAN]}).encode(encoding)
    with pytest.raises(HTTPProblem, match="numbers only") as refused:
        score_images(body, MAX)
    assert refused.value.status == 422


@pytest.mark.parametrize("image", [SCALED, UNIT_DOT, INT_DOT])
def test_pixels_scaled_to_0_1_are_refused_by_the_schema_and_the_parser_alike(image):
    body = {"images": [image]}
    assert not valid("ScoreRequest", body) and not valid("InvocationRequest", {"inputs": [image]})
    with pytest.raises(HTTPProblem, match=r"scaled to \[0, 1\]") as refused:
        score_images(json.dumps(body).encode(), MAX)
    assert refused.value.status == 422


def test_swagger_uis_files_are_installed():
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"} <= {p.name for p in assets_folder().iterdir()}
