"""A missing system program: a skip naming its Debian package on a developer's machine, a failure under CI=true."""

from __future__ import annotations

import pytest

from tests.support.tools import require


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_outside_ci_a_missing_program_skips_naming_its_package(monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match=r"^needs Prometheus: apt-get install prometheus$"):
        require(False, "Prometheus", "prometheus")


@pytest.mark.parametrize("ci", ["true", "TRUE"])
def test_under_ci_a_missing_program_fails_naming_its_package(monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=r"^needs Chromium: apt-get install chromium \(CI=true"):
        require(None, "Chromium", "chromium")


@pytest.mark.parametrize("ci", [None, "true"])
def test_a_program_that_is_there_neither_skips_nor_fails(monkeypatch, tmp_path, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert require(tmp_path, "PostgreSQL's server programs", "postgresql") is None  # a folder found, as pg_bin()'s
