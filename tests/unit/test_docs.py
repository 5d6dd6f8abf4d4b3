"""The API documentation: every module has a page entry, and `mkdocs build --strict` renders it offline."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_every_module_is_on_an_api_page():
    modules = {p.stem for p in (ROOT / "src" / "rotmnist").glob("*.py") if p.stem != "__init__"}
    documented = {
        name
        for page in (ROOT / "docs" / "api").glob("*.md")
        for name in re.findall(r"^::: rotmnist\.(\w+)\s*$", page.read_text(), flags=re.MULTILINE)
    }
    assert modules - documented == set(), "add `::: rotmnist.<module>` to its layer's page in docs/api/"
    assert documented - modules == set(), "docs/api/ names a module that no longer exists"


@pytest.mark.slow
def test_strict_build_renders_the_api_pages(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    assert "learn_model" in (tmp_path / "api" / "learn" / "index.html").read_text()
    assert "monitor_perf" in (tmp_path / "api" / "compute" / "index.html").read_text()
    assert "load_config" in (tmp_path / "api" / "foundation" / "index.html").read_text()
    assert "fonts.googleapis.com" not in (tmp_path / "index.html").read_text()
