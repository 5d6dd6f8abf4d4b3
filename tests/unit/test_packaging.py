"""The pins beyond the Python that runs the tests: pip resolves them, and the dev extra, to wheels for every other
Python that requires-python admits, on Linux x86_64, installing nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
PINS = [*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["dev"]]
RUNNING = f"{sys.version_info.major}.{sys.version_info.minor}"
# Linux x86_64 with glibc 2.28 or newer, where torch's wheels (manylinux_2_28) install. pip takes exactly the
# platform tags it is given, so every older manylinux tag is named too.
PLATFORMS = [
    *(f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]
# dvc -> hydra-core -> omegaconf needs antlr4-python3-runtime 4.9.*, of which PyPI has the source only. It builds
# into one pure-Python wheel (py3-none-any) that every Python 3 installs, as `make setup` builds it.
SOURCE_ONLY = "antlr4-python3-runtime==4.9.3"
# The settings pip needs to reach its index. Every other PIP_* variable and every configuration file is left out:
# constraints, local wheel folders or extra indexes of one machine must not decide what the index offers.
REACH_INDEX = ("PIP_INDEX_URL", "PIP_CERT", "PIP_CLIENT_CERT", "PIP_TRUSTED_HOST", "PIP_PROXY", "PIP_DEFAULT_TIMEOUT")


def admitted_pythons() -> list[str]:
    """The Python 3 minor versions that requires-python admits."""
    spec = SpecifierSet(PROJECT["requires-python"])
    return [f"3.{minor}" for minor in range(30) if spec.contains(f"3.{minor}")]


def pip(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -m pip` with `args`, blind to this machine's pip configuration (see REACH_INDEX)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in REACH_INDEX}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    cmd = [sys.executable, "-m", "pip", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def source_only_wheels(tmp_path_factory) -> Path:
    """A folder holding the wheel built from SOURCE_ONLY (skips when pip cannot reach its index)."""
    try:
        reached = pip("install", "--dry-run", "--no-deps", "--ignore-installed", "--quiet", "pip", timeout=120)
    except subprocess.TimeoutExpired:
        reached = None
    if reached is None or reached.returncode != 0:
        pytest.skip("pip cannot reach its package index")
    folder = tmp_path_factory.mktemp("wheels")
    built = pip("wheel", "--no-deps", "--quiet", "--wheel-dir", str(folder), SOURCE_ONLY)
    assert built.returncode == 0, built.stderr
    [wheel] = folder.glob("*.whl")
    assert parse_wheel_filename(wheel.name)[3] == {Tag("py3", "none", "any")}, wheel.name
    return folder


def resolve(python: str, find_links: Path) -> list[dict]:
    """What `pip install` of the pins would install on `python` (the `install` list of pip's report)."""
    proc = pip(
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--report=-",
        f"--python-version={python}",
        "--only-binary=:all:",
        *(f"--platform={platform}" for platform in PLATFORMS),
        f"--find-links={find_links}",
        # each wheel's metadata read through HTTP range requests, not whole wheels (torch brings GBs of CUDA wheels)
        "--use-feature=fast-deps",
        *PINS,
    )
    assert proc.returncode == 0, f"the pins do not resolve to wheels for Python {python}:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)["install"]


def requirements_pip_left_out(report: list[dict], python: str) -> list[str]:
    """The requirements of the resolved distributions that apply on `python` but not on the running Python.

    pip evaluates environment markers for the Python it runs on, whatever --python-version says: a dependency
    that only `python` needs (`; python_version >= "3.13"`) would be missing from the resolution.
    """
    here = default_environment()
    there = here | {"python_version": python, "python_full_version": f"{python}.0"}
    extras: dict[str, set[str]] = defaultdict(lambda: {""})
    for line in PINS + [r for item in report for r in item["metadata"].get("requires_dist", [])]:
        req = Requirement(line)
        extras[canonicalize_name(req.name)] |= req.extras
    left_out = set()
    for item in report:
        name = item["metadata"]["name"]
        for line in item["metadata"].get("requires_dist", []):
            marker = Requirement(line).marker
            if marker is None:
                continue
            for extra in extras[canonicalize_name(name)]:
                if marker.evaluate(there | {"extra": extra}) and not marker.evaluate(here | {"extra": extra}):
                    left_out.add(f"{name}: {line}")
    return sorted(left_out)


def test_requires_python_admits_3_11_to_3_13():
    assert admitted_pythons() == ["3.11", "3.12", "3.13"]


def test_a_dependency_only_a_newer_python_needs_is_reported_as_left_out_by_pip():
    later = f"3.{sys.version_info.minor + 1}"
    report = [
        {
            "metadata": {
                "name": "lib",
                "requires_dist": [
                    f'backport; python_version < "{later}"',  # needed here only: pip took it, harmless there
                    f'successor; python_version >= "{later}"',  # needed there only: pip did not take it
                    f'extension; python_version >= "{later}" and extra == "fast"',  # an extra nobody asks for
                    "plain",
                ],
            }
        }
    ]
    assert requirements_pip_left_out(report, later) == [f'lib: successor; python_version >= "{later}"']
    assert requirements_pip_left_out(report, RUNNING) == []


OTHER_PYTHONS = [v for v in admitted_pythons() if v != RUNNING]


@pytest.fixture(scope="module")
def resolutions(source_only_wheels) -> Iterator[dict[str, Future]]:
    """Each other admitted Python's resolution of the pins, all started at once: each waits on the index, not on
    the CPU, so together they take about as long as the slowest one."""
    with ThreadPoolExecutor(max_workers=len(OTHER_PYTHONS)) as pool:
        yield {python: pool.submit(resolve, python, source_only_wheels) for python in OTHER_PYTHONS}


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.parametrize("python", OTHER_PYTHONS)
def test_the_pins_resolve_to_wheels_on_every_other_admitted_python(python, resolutions):
    report = resolutions[python].result()
    [torch] = [item for item in report if canonicalize_name(item["metadata"]["name"]) == "torch"]
    wheel = torch["download_info"]["url"].rsplit("/", 1)[-1]
    cp = "cp" + python.replace(".", "")
    tags = parse_wheel_filename(wheel)[3]
    assert {(tag.interpreter, tag.abi) for tag in tags} == {(cp, cp)}, wheel
    assert all(tag.platform.startswith("manylinux") and tag.platform.endswith("_x86_64") for tag in tags), wheel
    assert requirements_pip_left_out(report, python) == []
    print(f"Python {python}: {len(report)} wheels, torch from {wheel}")
