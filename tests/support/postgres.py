"""A throwaway PostgreSQL cluster on loopback, in a temporary folder, for the scale-out tests."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.support.tools import require

# Debian keeps the server binaries in a versioned folder outside PATH.
PG_BIN_DIRS = (*sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True), None)


def pg_bin() -> Path | None:
    """The folder holding initdb and pg_ctl (Debian's versioned folder, else PATH), or None."""
    for folder in PG_BIN_DIRS:
        if folder is None:
            initdb = shutil.which("initdb")
            return Path(initdb).parent if initdb else None
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres_user(cmd: list[str], folder: Path) -> list[str]:
    """initdb and postgres refuse to run as root: as root, run them as `nobody`, owner of the cluster folder."""
    if os.geteuid() != 0:
        return cmd
    user = pwd.getpwnam("nobody")
    for path in (folder, *folder.rglob("*")):
        os.chown(path, user.pw_uid, user.pw_gid)
    return ["runuser", "-u", "nobody", "--", *cmd]


@contextlib.contextmanager
def postgres_cluster(databases: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """Start a cluster in a new temporary folder on a free loopback port (trust auth); yield {database: URL}.

    The folder sits directly in the system's temporary folder, which the unprivileged server user can reach
    (pytest's own temporary folders are private to root). The cluster is stopped and removed afterwards. Without
    the server programs the calling test skips (fails under CI=true).
    """
    bin_dir = pg_bin()
    require(bin_dir, "PostgreSQL's server programs (initdb, pg_ctl)", "postgresql")
    folder = Path(tempfile.mkdtemp(prefix="rotmnist-pg-"))
    data = folder / "data"
    port = free_port()

    def run(*cmd: str) -> None:
        full = _as_postgres_user([str(bin_dir / cmd[0]), *cmd[1:]], folder)
        proc = subprocess.run(full, capture_output=True, text=True, timeout=120, cwd=folder)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {proc.stdout}\n{proc.stderr}")

    run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {folder} -c fsync=off -c max_connections=200"
    run("pg_ctl", "-D", str(data), "-o", options, "-l", str(folder / "server.log"), "-w", "start")
    try:
        base = f"postgresql://postgres@127.0.0.1:{port}"
        for name in databases:
            run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", name)
        yield {name: f"{base}/{name}" for name in databases}
    finally:
        run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def fresh_database(url: str, name: str) -> str:
    """Create the empty database `name` on the cluster of `url` (any of its databases); return its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{url.rsplit('/', 1)[0]}/{name}"
