"""A real `mlflow server` on a free loopback port, for the tests that track through HTTP."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.support.postgres import free_port

MLFLOW = str(Path(sys.executable).parent / "mlflow")
# What `make server AUTH=1` gives MLflow's basic-auth app, and the admin user it names.
AUTH_CONFIG = Path(__file__).resolve().parents[2] / "config" / "mlflow-auth.ini"
ADMIN = "admin"


@contextlib.contextmanager
def mlflow_server(
    backend_uri: str, artifacts: Path, timeout: float = 120, admin_password: str | None = None
) -> Iterator[str]:
    """Start `mlflow server` (security middleware on) with proxied artifacts in `artifacts`; yield its URL.

    With `admin_password`, MLflow's basic-auth app on AUTH_CONFIG, as `make server AUTH=1` runs it: the users'
    database in the folder holding `artifacts`, the user ADMIN created with that password.
    """
    folder, port = artifacts.parent, free_port()
    cmd = [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", backend_uri, "--artifacts-destination", artifacts.resolve().as_uri()]
    env = os.environ.copy()
    env.pop("MLFLOW_TRACKING_URI", None)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # as `make server`: no job runner processes
    if admin_password is not None:
        cmd += ["--app-name", "basic-auth"]
        env |= {
            "MLFLOW_AUTH_CONFIG_PATH": str(AUTH_CONFIG),
            "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        }
    log = open(folder / f"mlflow-server-{port}.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(url, proc, Path(log.name), timeout)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its worker processes
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _wait_until_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll /health (open also with logins) until it answers 200; fail with the log's tail if the server dies."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"mlflow server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.5)
