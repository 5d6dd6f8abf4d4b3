"""The commands of docs/getting-started.md's "First look", run as written: in a new shell from the repository
root, with only `source .venv/bin/activate` before them."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from rotmnist.cli import COMMANDS, STAGES

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "getting-started.md"
ACTIVATE = ROOT / ".venv" / "bin" / "activate"
REQUIRED = ("rotmnist --help", "dvc dag", "dvc status", "dvc metrics show", "dvc params diff")

pytestmark = pytest.mark.slow


def first_look_commands() -> list[str]:
    """The lines of the first ```bash block under the page's "First look" heading (comments dropped)."""
    text = PAGE.read_text()
    heading = re.search(r"^#+[ \t]+First look[ \t]*$", text, flags=re.MULTILINE)
    assert heading, f"{PAGE.name} has no 'First look' heading"
    block = re.compile(r"^```bash[ \t]*\n(.*?)^```", re.MULTILINE | re.DOTALL).search(text, heading.end())
    assert block, f"{PAGE.name} shows no ```bash block after 'First look'"
    lines = (re.sub(r"(?:^|\s)#.*$", "", line).strip() for line in block.group(1).splitlines())
    return [line for line in lines if line]


def new_shell_env() -> dict[str, str]:
    """The caller's environment without any virtual environment on PATH, as a fresh login shell has it."""
    venv_bin = str(ROOT / ".venv" / "bin")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MLFLOW_TRACKING_URI")}
    return env | {"PATH": path or "/usr/bin:/bin", "DVC_NO_ANALYTICS": "1"}


def run_as_documented(command: str) -> subprocess.CompletedProcess:
    if not ACTIVATE.exists():
        pytest.skip("no .venv/bin/activate: run `make setup` (or `make repro`) first")
    return subprocess.run(
        ["bash", "-c", f"source .venv/bin/activate && {command}"],
        cwd=ROOT,
        env=new_shell_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_page_shows_the_first_look_commands():
    assert [c for c in REQUIRED if c not in first_look_commands()] == []


def test_the_commands_need_the_activated_environment():
    # What the page warns about: in a new shell without activation, rotmnist is not found (exit 127).
    if not ACTIVATE.exists():
        pytest.skip("no .venv/bin/activate: run `make setup` (or `make repro`) first")
    bare = subprocess.run(["bash", "-c", "rotmnist --help"], cwd=ROOT, env=new_shell_env(), capture_output=True)
    if bare.returncode == 0:
        pytest.skip("a rotmnist outside .venv is on PATH")
    assert bare.returncode == 127


@pytest.mark.parametrize("command", first_look_commands())
def test_first_look_command_runs_as_shown(command):
    proc = run_as_documented(command)
    assert proc.returncode == 0, f"`{command}` exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    if command == "rotmnist --help":
        assert [name for name in (*STAGES, *COMMANDS) if name not in proc.stdout] == []
    elif command == "dvc dag":
        assert all(stage in proc.stdout for stage in STAGES)
    elif command == "dvc metrics show":
        assert "metrics/train.json" in proc.stdout
        assert "metrics/monitor.json" in proc.stdout
