"""The published API of `rotmnist serve`: what its routes read and answer, in OpenAPI terms.

`/openapi.json` is built from these (the handlers read raw bodies themselves, for several content
types and the body limit, so the bodies and answers are declared here rather than derived from
type hints); the limits come from the server's settings. The request schemas describe what numpy
parses (a batch's limits, the rule on pixels scaled to 0..1), which no pydantic type would validate the
same way; the typed answer `ModelInfo` is a pydantic model and its schema is generated.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from rotmnist.spec import IMAGE_SHAPE

if TYPE_CHECKING:
    from rotmnist.config import ServeConfig


class ModelInfo(BaseModel):
    """The served model as `GET /version` describes it: these fields and no others."""

    # Serialised, every field is present (null when unknown): the schema says all are required.
    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_serialization_defaults_required=True)

    uri: str = Field(description="the URI the model was loaded from")
    name: str | None = Field(None, description="the registered model's name (null outside the registry)")
    version: str | None = Field(None, description="the registered version")
    alias: str | None = Field(None, description="the alias it was loaded through (champion)")
    training_run_id: str | None = Field(None, description="the MLflow run that trained it")
    holdout_accuracy: float | None = Field(None, description="its accuracy on the holdout split, as registered")
    loaded_at: str = Field(
        default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"), description="when it was loaded (local time)"
    )


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(name)}}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json("Problem")}


ID_LENGTH = 64  # the longest id `POST /feedback` reads (the log's ids are 32 hex digits)
_TOO_LARGE = "the body is over serve.max_body_bytes, or it holds more than serve.max_images images"
_MODEL_FAILED = _problem("the model failed to score the images, or the server is shutting down")

SCORE_BODY: dict[str, Any] = {
    "required": True,
    "description": "A JSON batch of 28x28 images (pixels 0-255), the same as binary (raw uint8 pixels or a .npy "
    "array, for bulk clients), image files in a multipart form (any field, several files), or one raw image body. "
    "Files are prepared the way MNIST was made; arrays are only checked.",
    "content": {
        "application/json": {"schema": _ref("ScoreRequest")},
        "application/octet-stream": {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "N 28x28 images as uint8 pixels, row by row, back to back: N x 784 bytes",
            }
        },
        "application/x-npy": {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "a NumPy .npy array (N, 28, 28) or (28, 28) of integer or float pixels 0-255",
            }
        },
        "multipart/form-data": {"schema": _ref("ImageUpload")},
        "image/*": {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "one image file: PNG, JPEG or another format Pillow reads",
            }
        },
    },
}

SCORE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "per image: the digit, its probability and the ten probabilities", "content": _json("Scores")},
    400: _problem(
        "the body is not valid JSON or .npy, a raw body is not N x 784 bytes, the form cannot be parsed, or a file "
        "is not an image"
    ),
    413: _problem(_TOO_LARGE + ", or an uploaded image is over serve.max_image_pixels"),
    415: _problem(
        "the content type is not application/json, application/octet-stream, application/x-npy, "
        "multipart/form-data or image/*"
    ),
    422: _problem(
        "the JSON or .npy array is not a batch of 28x28 images of pixels 0-255 (the schema's Images: pixels scaled "
        "to 0..1 are refused), or the form holds no file"
    ),
    503: _MODEL_FAILED,
}

INVOCATIONS_BODY: dict[str, Any] = {
    "required": True,
    "description": "MLflow's tensor input: `inputs` (or `instances`) is a batch of 28x28 images, pixels 0-255.",
    "content": _json("InvocationRequest"),
}

INVOCATIONS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "MLflow's answer: the ten probabilities of each image", "content": _json("Predictions")},
    400: _problem("the body is not valid JSON"),
    413: _problem(_TOO_LARGE),
    415: _problem("the content type is not application/json"),
    422: _problem(
        "the JSON is not a batch of 28x28 images of pixels 0-255 (the schema's Images: pixels scaled to 0..1 are "
        "refused)"
    ),
    503: _MODEL_FAILED,
}

FEEDBACK_BODY: dict[str, Any] = {
    "required": True,
    "description": "The digit a scored image really was: the prediction's `id` (from `/score` or `/invocations`) "
    "and the `label` 0-9. Each prediction takes one correction.",
    "content": _json("Feedback"),
}

FEEDBACK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the correction is stored", "content": _json("Correction")},
    400: _problem("the body is not valid JSON"),
    404: _problem("no recorded prediction has this id (or the request log is off: serve.log_requests is false)"),
    409: _problem("this prediction was corrected before"),
    413: _problem("the body is over serve.max_body_bytes"),
    415: _problem("the content type is not application/json"),
    422: _problem("the JSON is not an object with a string `id` and an integer `label` 0-9"),
    503: _problem("the request log cannot store the correction now; try again"),
}

HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`stale` when the last reload failed and the old model still serves",
        "content": _json("Health"),
    }
}
VERSION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the served model: registry name, version, alias and training run",
        "content": _json("ModelInfo"),
    }
}
UNAUTHORIZED_RESPONSE = _problem("the route needs the server's token (Authorization: Bearer <token>), missing or wrong")

RELOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the champion was checked (and loaded when it changed)", "content": _json("Reload")},
    413: _problem("the request carries a body over serve.max_body_bytes"),
    503: {"description": "the new champion did not load; the old model still serves", "content": _json("Reload")},
}


def _nullable(kind: str) -> dict[str, Any]:
    return {"type": [kind, "null"]}


_PROBABILITIES = {"type": "array", "minItems": 10, "maxItems": 10, "items": {"type": "number"}}
_ID = {
    "type": ["string", "null"],
    "description": "the prediction's id in the request log, for `POST /feedback`; null when it was not recorded "
    "(the log's queue was full). Absent when the server records nothing (serve.log_requests: false).",
}
_PREDICTION = {
    "type": "object",
    "required": ["digit", "probability", "probabilities"],
    "properties": {
        "id": _ID,
        "name": {"type": "string", "description": "the uploaded file's name (uploads only)"},
        "digit": {"type": "integer", "minimum": 0, "maximum": 9},
        "probability": {"type": "number"},
        "probabilities": _PROBABILITIES,
    },
}
# What the routes answer: the same whatever the settings.
ANSWERS: dict[str, Any] = {
    "Problem": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Scores": {
        "type": "object",
        "required": ["model", "predictions"],
        "properties": {
            "model": {
                "type": "object",
                "required": ["name", "version"],
                "properties": {"name": _nullable("string"), "version": _nullable("string")},
            },
            "predictions": {"type": "array", "items": _PREDICTION},
        },
    },
    "Predictions": {
        "type": "object",
        "required": ["predictions"],
        "properties": {
            "predictions": {"type": "array", "items": _PROBABILITIES},
            "ids": {
                "type": "array",
                "items": _ID,
                "description": "the predictions' ids in the request log, in the same order (not part of MLflow's "
                "protocol: its clients read `predictions` only); absent when the server records nothing",
            },
        },
    },
    "Correction": {
        "type": "object",
        "required": ["id", "label", "predicted", "disagrees"],
        "properties": {
            "id": {"type": "string"},
            "label": {"type": "integer", "minimum": 0, "maximum": 9},
            "predicted": {"type": "integer", "minimum": 0, "maximum": 9},
            "disagrees": {"type": "boolean", "description": "whether the label differs from the predicted digit"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "model", "version"],
        "properties": {
            "status": {"enum": ["ok", "stale"]},
            "model": {"type": "string"},
            "version": _nullable("string"),
            "reload_error": {"type": "string"},
            "failed_version": _nullable("string"),
        },
    },
    "ModelInfo": ModelInfo.model_json_schema(mode="serialization"),
    "Reload": {
        "type": "object",
        "required": ["reloaded", "version", "error"],
        "properties": {
            "reloaded": {"type": "boolean"},
            "version": _nullable("string"),
            "error": _nullable("string"),
        },
    },
}


def schemas(settings: ServeConfig) -> dict[str, Any]:
    """The JSON Schemas the routes refer to: the requests, with the limits of `settings`, and the answers."""
    rows, cols = IMAGE_SHAPE
    pixel = {"type": "number", "minimum": 0, "maximum": 255}
    image = {
        "type": "array",
        "minItems": rows,
        "maxItems": rows,
        "items": {"type": "array", "minItems": cols, "maxItems": cols, "items": pixel},
    }
    images = {
        "type": "array",
        "minItems": 1,
        "maxItems": settings.max_images,
        "items": _ref("Image"),
        # pixels scaled to 0..1 are refused (data.images.pixel_problem): blank, or some pixel above 1
        "anyOf": [
            {"items": {"items": {"items": {"const": 0}}}},
            {"contains": {"contains": {"contains": {"type": "number", "exclusiveMinimum": 1}}}},
        ],
        "description": "28x28 images, pixels 0-255 (white digit on black, as MNIST); a batch whose pixels are "
        "all within 0..1, some above 0, looks scaled to 0..1 and is refused",
    }
    upload = {
        "type": "string",
        "format": "binary",
        "description": "an image file: PNG, JPEG or another format Pillow reads",
    }
    invocation = [
        {"type": "object", "required": ["inputs"], "properties": {"inputs": _ref("Images")}},
        {
            "type": "object",
            "required": ["instances"],
            "properties": {"instances": _ref("Images")},
            "not": {"required": ["inputs"]},
        },
    ]
    return {
        "Image": image,
        "Images": images,
        "ScoreRequest": {"type": "object", "required": ["images"], "properties": {"images": _ref("Images")}},
        "InvocationRequest": {"oneOf": invocation},
        "Feedback": {
            "type": "object",
            "required": ["id", "label"],
            "properties": {
                "id": {"type": "string", "minLength": 1, "maxLength": ID_LENGTH, "description": "a prediction's id"},
                "label": {"type": "integer", "minimum": 0, "maximum": 9, "description": "the digit it really was"},
            },
        },
        "ImageUpload": {
            "type": "object",
            "required": ["file"],
            "properties": {"file": upload},
            "description": f"image files in any fields, at most {settings.max_images}",
        },
        **ANSWERS,
    }
