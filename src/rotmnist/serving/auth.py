"""Who may change the service, and who may score: the server's token and the rules that apply it.

The token comes from `ROTMNIST_SERVE_TOKEN`, else from the file `serve.token_file` names. `POST /reload`
needs it whenever one is set, and always on a server bound to anything but loopback (there, without a
token, nobody can reload: the champion poll still swaps models). Scoring needs it when
`serve.require_token_for_scoring` is true. Clients send `Authorization: Bearer <token>`; a missing or
wrong one gets 401 that says nothing of the expected value. Tokens are compared in constant time and
never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rotmnist.errors import PipelineError, first_line
from rotmnist.serving.requests import HTTPProblem

if TYPE_CHECKING:
    from starlette.requests import Request

    from rotmnist.config import ServeConfig
    from rotmnist.paths import Paths

TOKEN_ENV = "ROTMNIST_SERVE_TOKEN"
SCHEME = "bearer"  # the OpenAPI security scheme's name
UNAUTHORIZED = "this route needs the server's token: send the header Authorization: Bearer <token>"


def read_token(settings: ServeConfig, paths: Paths) -> str | None:
    """`ROTMNIST_SERVE_TOKEN`, else the content of `serve.token_file` (relative to the workspace), else None."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    if not settings.token_file:
        return None
    path = paths.root / settings.token_file
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise PipelineError(f"cannot read serve.token_file {path}: {first_line(err)}") from None
    if not token:
        raise PipelineError(f"serve.token_file {path} is empty; write the token in it, or unset serve.token_file")
    return token


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    """The token (or None) and which routes need it."""

    token: str | None = None
    protect_reload: bool = False
    protect_scoring: bool = False

    @classmethod
    def decide(cls, settings: ServeConfig, token: str | None, host: str, insecure: bool = False) -> Access:
        """The rules for a server bound to `host`; a PipelineError when they cannot hold.

        A non-loopback address without a token refuses to start unless `insecure`; scoring that needs a
        token refuses to start without one.
        """
        loopback = is_loopback(host)
        if not loopback and token is None and not insecure:
            raise PipelineError(
                f"refusing to serve on {host} without a token: anyone who reaches it could use the service; set "
                f"{TOKEN_ENV} (or serve.token_file), or pass --insecure (POST /reload then answers 401 to everyone)"
            )
        scoring = settings.require_token_for_scoring
        if scoring and token is None:
            raise PipelineError(
                f"serve.require_token_for_scoring is true but there is no token: set {TOKEN_ENV} or serve.token_file"
            )
        return cls(token, protect_reload=token is not None or not loopback, protect_scoring=scoring)

    def describe(self) -> str:
        """Which routes need the token, for the log (never the token)."""
        needs = [name for name, on in (("reload", self.protect_reload), ("scoring", self.protect_scoring)) if on]
        return f"token required for {' and '.join(needs)}" if needs else "no token required"

    def check(self, request: Request, scoring: bool) -> None:
        """Refuse (401) a request to a protected route without the right token."""
        if not (self.protect_scoring if scoring else self.protect_reload):
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if self.token is None or scheme.lower() != "bearer" or not _same(given.strip(), self.token):
            raise HTTPProblem(401, UNAUTHORIZED)


def _same(given: str, token: str) -> bool:
    """Constant-time comparison (in the length of the token) of what the client sent with the token."""
    return hmac.compare_digest(given.encode(), token.encode())
