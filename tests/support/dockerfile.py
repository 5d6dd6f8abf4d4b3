"""The Dockerfile as the docker client reads it: its instructions and its build context (.dockerignore applied)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


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


def build_context() -> set[str]:
    """The paths `docker build .` sends from the repository, as the docker client reads .dockerignore."""
    from docker.utils.build import exclude_paths

    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    return set(exclude_paths(str(REPO), [line for line in lines if line and not line.startswith("#")], "Dockerfile"))
