"""`rotmnist serve`'s published API: `/openapi.json` checked by schemathesis against the real server, `/docs` offline.

The server runs on loopback with the template champion of tests/support/serving.py and a request log in a
temp folder; schemathesis generates requests from the schema (valid ones and invalid ones) and checks every
answer against it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rotmnist.config import ServeConfig
from rotmnist.serving.app import create_app
from rotmnist.serving.model_source import Keeper, ModelSource
from rotmnist.storage.request_log import RequestLog
from tests.support.serving import call, champion_store, get_json, serving

pytestmark = pytest.mark.slow  # a real MLflow store, a server and a few hundred generated requests

NAME = "digits"
# Few images per request keeps generated batches small; the body limit sits above the largest valid batch.
LIMITS = ServeConfig(poll_seconds=0, max_body_bytes=1024 * 1024, max_images=3, max_image_pixels=1_000_000)
OPERATIONS = {
    "/score": "post",
    "/invocations": "post",
    "/feedback": "post",
    "/health": "get",
    "/version": "get",
    "/reload": "post",
}
EXAMPLES = 60  # per operation and phase: enough to reach the corner cases (a pixel at 1.0, a file that is no image)

# A batch over serve.max_images is refused with 413 (documented; clients rely on it), not schemathesis's 4xx list.
# positive_data_acceptance expects 2xx for every request the schema allows, and the JSON schemas say exactly what
# the parsers accept (pixels scaled to 0..1 included; tests/unit/serving/test_openapi.py). What no schema can say
# is allowed per route, each documented among the route's answers: random bytes that match `format: binary` are
# not an image (400) and a form field without a file holds no image (422); a valid correction names an id nobody
# was given (404) or one corrected before (409).
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]

[[operations]]
include-path = "/score"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400"]

[[operations]]
include-path = "/feedback"
checks.positive_data_acceptance.expected-statuses = ["2xx", "404", "409"]
"""


@pytest.fixture(scope="module")
def url(tmp_path_factory, empty_store):
    with champion_store(tmp_path_factory.mktemp("openapi-store"), empty_store, NAME):
        source = ModelSource(NAME)
        keeper = Keeper(source, source.load_initial())
        log = RequestLog.open(f"sqlite:///{tmp_path_factory.mktemp('openapi-log') / 'requests.db'}")
        log.elsewhere_seconds = 0  # no other replica writes this log: an unknown id is unknown at once
        with serving(create_app(keeper, LIMITS, log=log)) as base:
            yield base


def test_the_schema_describes_every_route_with_its_bodies_and_refusals(url):
    status, doc = get_json(f"{url}/openapi.json")
    assert status == 200
    assert {path: list(ops) for path, ops in doc["paths"].items()} == {p: [m] for p, m in OPERATIONS.items()}
    score = doc["paths"]["/score"]["post"]
    assert set(score["requestBody"]["content"]) == {
        "application/json",
        "application/octet-stream",
        "application/x-npy",
        "multipart/form-data",
        "image/*",
    }
    assert set(score["responses"]) == {"200", "400", "413", "415", "422", "503"}
    invocations = doc["paths"]["/invocations"]["post"]
    assert set(invocations["requestBody"]["content"]) == {"application/json"}
    feedback = doc["paths"]["/feedback"]["post"]
    assert set(feedback["responses"]) == {"200", "400", "404", "409", "413", "415", "422", "503"}
    for op in (score, invocations, feedback):
        for code, answer in op["responses"].items():
            if code != "200":
                assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
    schemas = doc["components"]["schemas"]
    assert schemas["Images"]["maxItems"] == LIMITS.max_images
    assert schemas["Image"]["minItems"] == schemas["Image"]["maxItems"] == 28


def test_docs_load_swagger_ui_from_this_server_only(url):
    status, raw = call(f"{url}/docs")
    assert status == 200
    html = raw.decode()
    assert "swagger-ui" in html and "/openapi.json" in html
    assert re.findall(r"(?:https?:)?//[\w.-]+", html) == []  # no CDN, no validator badge: works offline
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert {Path(a).suffix for a in assets} >= {".js", ".css"}
    for asset in assets:
        status, body = call(url + asset)
        assert status == 200 and len(body) > 0, asset


def test_schemathesis_finds_every_answer_as_documented(url, tmp_path):
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    report = tmp_path / "report.xml"
    cmd = [str(Path(sys.executable).with_name("st")), "run", f"{url}/openapi.json", "--checks", "all"]
    cmd += ["--max-examples", str(EXAMPLES), "--seed", "23", "--workers", "1", "--no-shrink"]
    cmd += ["--report", "junit", "--report-junit-path", str(report), "--request-timeout", "30"]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    tested = re.findall(r'<testcase name="([A-Z]+ [^"]+)"', report.read_text())
    assert sorted(tested) == sorted(f"{m.upper()} {p}" for p, m in OPERATIONS.items()), tested
    print(json.dumps({"schemathesis": run.stdout.strip().splitlines()[-12:]}, indent=1))
