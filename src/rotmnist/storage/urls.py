"""Store URLs: which kind of store a URL names, and how to show one without its password."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


def is_postgres(url: str) -> bool:
    """Whether `url` names a PostgreSQL database (any driver), the store several processes or machines share."""
    return url.lower().startswith(("postgresql://", "postgresql+"))


def redact(url: str) -> str:
    """`url` with its password hidden (SQLAlchemy's rendering); a path, `journal:<path>` or `databricks` as is."""
    try:
        parsed = make_url(url)
    except ArgumentError:  # not scheme://...: nothing that could hold a password
        return url
    if parsed.host and "@" in parsed.host:  # an unescaped "@" in the password: the host follows the last "@"
        secret, _, host = parsed.host.rpartition("@")
        parsed = parsed.set(password=f"{parsed.password}@{secret}", host=host)
    return parsed.render_as_string(hide_password=True)
