"""The token rules through the real `rotmnist serve` command and HTTP: who may reload, who may score, where it binds."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from rotmnist.serving.auth import TOKEN_ENV
from tests.support.serving import call, champion_store, free_socket, get_json, prepared, wait_for

pytestmark = pytest.mark.slow  # each case starts the real command (torch, MLflow, the model): seconds

NAME = "digits"
TOKEN = "s3rve-t0ken-for-tests"
SCORE = json.dumps({"images": [prepared(3).tolist()]}).encode()
INVOKE = json.dumps({"inputs": [prepared(3).tolist()]}).encode()
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def store(tmp_path_factory, empty_store) -> Iterator[Path]:
    with champion_store(tmp_path_factory.mktemp("token-store"), empty_store, NAME) as folder:
        yield folder


def serve_cmd(store: Path, serve: dict, *args: str, token: str | None = None) -> tuple[list[str], dict, int]:
    params = store / f"params-{len(list(store.glob('params-*')))}.yaml"
    params.write_text(yaml.safe_dump({"monitor": {"model_name": NAME}, "serve": {"poll_seconds": 0} | serve}))
    port = free_socket()
    number = port.getsockname()[1]
    port.close()
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    if token:
        env[TOKEN_ENV] = token
    cmd = [sys.executable, "-m", "rotmnist.cli", "--params", str(params), "serve", "--port", str(number), *args]
    return cmd, env, number


@contextlib.contextmanager
def running(store: Path, serve: dict, *args: str, token: str | None = None) -> Iterator[tuple[str, list[str]]]:
    """`rotmnist serve` in a subprocess; yield its URL and (once it stopped) its output lines."""
    cmd, env, port = serve_cmd(store, serve, *args, token=token)
    proc = subprocess.Popen(cmd, cwd=store, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, output = f"http://127.0.0.1:{port}", []
    try:
        wait_for(lambda: proc.poll() is not None or get_json(f"{url}/health")[0] == 200, timeout=90)
        assert proc.poll() is None, proc.communicate()[0]
        yield url, output
    finally:
        proc.terminate()
        output.extend(proc.communicate(timeout=30)[0].splitlines())


def refused(store: Path, serve: dict, *args: str, token: str | None = None) -> str:
    """Run `rotmnist serve` expecting it to refuse to start; return its one-line error."""
    cmd, env, _ = serve_cmd(store, serve, *args, token=token)
    proc = subprocess.run(cmd, cwd=store, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("rotmnist serve:")]
    assert "Traceback" not in proc.stderr
    return line


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post(url: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method="POST", headers={**JSON, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def assert_refused(answer: tuple[int, dict, dict]) -> None:
    status, body, headers = answer
    assert status == 401 and headers.get("www-authenticate", headers.get("WWW-Authenticate")) == "Bearer"
    assert "Authorization: Bearer" in body["error"] and TOKEN not in json.dumps(body)


def test_with_a_token_reload_needs_it_and_scoring_stays_open(store):
    with running(store, {}, token=TOKEN) as (url, output):
        assert_refused(post(f"{url}/reload"))
        assert_refused(post(f"{url}/reload", headers=bearer("wrong")))
        assert_refused(post(f"{url}/reload", headers=bearer(TOKEN + "x")))
        status, body, _ = post(f"{url}/reload", headers=bearer(TOKEN))
        assert status == 200 and body["version"] == "1"
        assert post(f"{url}/score", SCORE)[0] == 200
        doc = get_json(f"{url}/openapi.json")[1]
        assert doc["paths"]["/reload"]["post"]["security"] == [{"bearer": []}]
        assert "security" not in doc["paths"]["/score"]["post"] and TOKEN not in json.dumps(doc)
    assert "token required for reload" in "\n".join(output) and TOKEN not in "\n".join(output)


def test_scoring_protected_by_a_token_file(store):
    (store / "serve-token").write_text(TOKEN + "\n")
    with running(store, {"token_file": "serve-token", "require_token_for_scoring": True}) as (url, output):
        for route, body in (("score", SCORE), ("invocations", INVOKE)):
            assert_refused(post(f"{url}/{route}", body))
            assert_refused(post(f"{url}/{route}", body, bearer("nope")))
            assert post(f"{url}/{route}", body, bearer(TOKEN))[0] == 200
        assert_refused(post(f"{url}/reload"))
        assert call(f"{url}/")[0] == 200 and get_json(f"{url}/health")[0] == 200  # the page and health stay open
    assert "token required for reload and scoring" in "\n".join(output) and TOKEN not in "\n".join(output)


def test_a_non_loopback_address_needs_a_token_or_insecure(store):
    line = refused(store, {}, "--host", "0.0.0.0")
    assert "refusing to serve on 0.0.0.0 without a token" in line and "--insecure" in line
    with running(store, {}, "--host", "0.0.0.0", "--insecure") as (url, _):
        assert post(f"{url}/score", SCORE)[0] == 200
        assert_refused(post(f"{url}/reload", headers=bearer("anything")))  # no token: nobody reloads
    with running(store, {}, "--host", "0.0.0.0", token=TOKEN) as (url, _):
        assert_refused(post(f"{url}/reload"))
        assert post(f"{url}/reload", headers=bearer(TOKEN))[0] == 200


def test_scoring_that_needs_a_token_refuses_to_start_without_one(store):
    assert "require_token_for_scoring is true but there is no token" in refused(
        store, {"require_token_for_scoring": True}
    )
    assert "cannot read serve.token_file" in refused(store, {"token_file": "missing-token"})
