"""What a test does when a system program it drives is missing: skip on a developer's machine, fail in CI."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    """Whether the suite runs as CI runs it (CI=true, as `.ci/run` is started)."""
    return os.environ.get("CI", "").lower() == "true"


def require(found: object, what: str, package: str) -> None:
    """Skip the calling test when `found` is falsy, naming the Debian package that brings `what`; under CI, fail.

    `.ci/run` installs every such package, so in CI a missing program is a broken setup, not a test to skip.
    """
    if found:
        return
    reason = f"needs {what}: apt-get install {package}"
    if in_ci():
        pytest.fail(f"{reason} (CI=true: .ci/run installs it, so the test must run)", pytrace=False)
    pytest.skip(reason)
