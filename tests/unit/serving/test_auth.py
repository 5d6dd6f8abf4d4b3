"""The token rules: where the token comes from, which routes need it, and how a request is judged."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from rotmnist.config import ServeConfig
from rotmnist.errors import PipelineError
from rotmnist.paths import Paths
from rotmnist.serving import auth
from rotmnist.serving.requests import HTTPProblem

TOKEN = "t0ken-with-some-length"


def request(authorization: str | None) -> Request:
    headers = [(b"authorization", authorization.encode())] if authorization is not None else []
    return Request({"type": "http", "method": "POST", "path": "/reload", "headers": headers})


@pytest.fixture
def paths(tmp_path, monkeypatch) -> Paths:
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    return Paths(root=tmp_path, store_root=tmp_path)


def test_the_environment_wins_over_the_token_file(paths, monkeypatch):
    (paths.root / "token").write_text(f"  {TOKEN}-file\n")
    settings = ServeConfig(token_file="token")
    assert auth.read_token(settings, paths) == f"{TOKEN}-file"
    monkeypatch.setenv(auth.TOKEN_ENV, f" {TOKEN} ")
    assert auth.read_token(settings, paths) == TOKEN
    assert auth.read_token(ServeConfig(), paths) == TOKEN


def test_no_token_anywhere_is_none(paths):
    assert auth.read_token(ServeConfig(), paths) is None


@pytest.mark.parametrize(("content", "message"), [(None, "cannot read serve.token_file"), ("\n", "is empty")])
def test_a_missing_or_empty_token_file_is_a_clear_error(paths, content, message):
    if content is not None:
        (paths.root / "token").write_text(content)
    with pytest.raises(PipelineError, match=message):
        auth.read_token(ServeConfig(token_file="token"), paths)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        *[("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True), ("[::1]", True)],
        *[("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("example.org", False)],
    ],
)
def test_loopback_addresses(host, loopback):
    assert auth.is_loopback(host) is loopback


def test_on_loopback_without_a_token_every_route_is_open():
    access = auth.Access.decide(ServeConfig(), None, "127.0.0.1")
    assert (access.protect_reload, access.protect_scoring) == (False, False)
    access.check(request(None), scoring=False)
    assert access.describe() == "no token required"


def test_a_token_protects_reload_and_scoring_only_when_asked():
    access = auth.Access.decide(ServeConfig(), TOKEN, "127.0.0.1")
    assert (access.protect_reload, access.protect_scoring) == (True, False)
    access.check(request(None), scoring=True)
    both = auth.Access.decide(ServeConfig(require_token_for_scoring=True), TOKEN, "127.0.0.1")
    assert both.describe() == "token required for reload and scoring" and TOKEN not in repr(both.describe())


def test_a_non_loopback_address_without_a_token_refuses_unless_insecure():
    with pytest.raises(PipelineError, match=r"refusing to serve on 0\.0\.0\.0 without a token.*--insecure"):
        auth.Access.decide(ServeConfig(), None, "0.0.0.0")
    open_ = auth.Access.decide(ServeConfig(), None, "0.0.0.0", insecure=True)
    assert (open_.token, open_.protect_reload, open_.protect_scoring) == (None, True, False)
    with pytest.raises(HTTPProblem) as refused:  # nobody can reload: there is no token to give
        open_.check(request(f"Bearer {TOKEN}"), scoring=False)
    assert refused.value.status == 401


def test_scoring_that_needs_a_token_refuses_to_start_without_one():
    with pytest.raises(PipelineError, match="require_token_for_scoring is true but there is no token"):
        auth.Access.decide(ServeConfig(require_token_for_scoring=True), None, "127.0.0.1")


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer x"]
)
def test_a_missing_or_wrong_token_is_401_without_the_expected_value(header):
    access = auth.Access.decide(ServeConfig(), TOKEN, "127.0.0.1")
    with pytest.raises(HTTPProblem) as refused:
        access.check(request(header), scoring=False)
    assert refused.value.status == 401 and TOKEN not in refused.value.message


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer  {TOKEN} "])
def test_the_right_token_passes(header):
    auth.Access.decide(ServeConfig(), TOKEN, "127.0.0.1").check(request(header), scoring=False)
