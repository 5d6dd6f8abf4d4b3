"""Helpers of the serving tests: a template-matching digit model, a registered champion, a server in a thread
or the real `rotmnist serve` in a subprocess."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Strokes of each digit on a 280x280 pad, as a person would draw them (polylines; "0" is an ellipse).
STROKES: dict[int, list[list[tuple[int, int]]]] = {
    1: [[(140, 40), (140, 240)]],
    2: [[(80, 50), (200, 50), (200, 140), (80, 140), (80, 240), (200, 240)]],
    3: [[(80, 50), (200, 50), (200, 240), (80, 240)], [(90, 140), (200, 140)]],
    4: [[(80, 40), (80, 140), (200, 140)], [(200, 40), (200, 240)]],
    5: [[(200, 50), (80, 50), (80, 140), (200, 140), (200, 240), (80, 240)]],
    6: [[(200, 50), (80, 50), (80, 240), (200, 240), (200, 140), (80, 140)]],
    7: [[(80, 50), (200, 50), (200, 240)]],
    8: [[(80, 50), (200, 50), (200, 240), (80, 240), (80, 50)], [(80, 140), (200, 140)]],
    9: [[(200, 140), (80, 140), (80, 50), (200, 50), (200, 240), (80, 240)]],
}
ELLIPSE = (85, 40, 195, 240)  # the "0": bounding box on the pad
STROKE = 20  # the page's pen width on its 280 px pad


def ellipse_points(n: int = 40) -> list[tuple[int, int]]:
    """The "0" as a closed polyline (how the browser test draws it with the mouse)."""
    x0, y0, x1, y1 = ELLIPSE
    t = np.linspace(0, 2 * np.pi, n + 1)
    return [
        (round((x0 + x1) / 2 + (x1 - x0) / 2 * np.sin(a)), round((y0 + y1) / 2 - (y1 - y0) / 2 * np.cos(a))) for a in t
    ]


def drawing(digit: int) -> Image.Image:
    """A black-on-white 280x280 drawing of `digit`, as the page's pad makes it."""
    img = Image.new("L", (280, 280), 255)
    pen = ImageDraw.Draw(img)
    for line in [ellipse_points()] if digit == 0 else STROKES[digit]:
        pen.line(line, fill=0, width=STROKE, joint="curve")
        for x, y in (line[0], line[-1]):
            pen.ellipse((x - STROKE // 2, y - STROKE // 2, x + STROKE // 2, y + STROKE // 2), fill=0)
    return img


def prepared(digit: int) -> np.ndarray:
    """The drawing of `digit` prepared as MNIST digits are (28x28 uint8, white on black)."""
    from rotmnist.data.images import to_mnist_image

    return to_mnist_image(np.asarray(drawing(digit)))


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def template_classifier():
    """A logistic regression whose weights are blurred prepared drawings: the nearest template wins."""
    import torch
    from torch import nn

    from rotmnist.learning.model import RawImageClassifier

    t = np.stack(
        [np.asarray(Image.fromarray(prepared(d)).filter(ImageFilter.GaussianBlur(1.5)), np.float32) for d in range(10)]
    )
    t = torch.from_numpy(t.reshape(10, -1) / 255.0)
    linear = nn.Linear(784, 10)
    with torch.no_grad():  # logit_k = s * (<x, t_k> - |t_k|^2 / 2): the closest template has the largest
        linear.weight.copy_(0.5 * t)
        linear.bias.copy_(-0.25 * (t * t).sum(1))
    return RawImageClassifier(nn.Sequential(nn.Flatten(), linear), mean=0.0, std=255.0).eval()


def register_champion(module, name: str, experiment: str = "serve-test") -> str:
    """Log `module` in a new run of the current MLflow store, register it and make it `name@champion`."""
    import mlflow
    from mlflow import MlflowClient

    from rotmnist.tracking import train as training_run

    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        uri = training_run.log_classifier(module)
    client = MlflowClient()
    version = mlflow.register_model(uri, name, tags={"training_run_id": run.info.run_id})
    client.set_model_version_tag(name, version.version, "holdout_accuracy", "0.990000")
    client.set_registered_model_alias(name, "champion", version.version)
    return str(version.version)


def promote_again(name: str) -> str:
    """Register the champion's logged model once more as a new version of `name` and move the alias to it.

    A promotion that costs milliseconds (no training, no export): the server sees a new champion version
    and loads it as it would any other.
    """
    import mlflow
    from mlflow import MlflowClient

    champion = MlflowClient().get_model_version_by_alias(name, "champion")
    version = mlflow.register_model(champion.source, name, tags=champion.tags)
    MlflowClient().set_registered_model_alias(name, "champion", version.version)
    return str(version.version)


@contextlib.contextmanager
def champion_store(folder: Path, empty_store: Path | None, name: str) -> Iterator[Path]:
    """A SQLite store in `folder` (a copy of `empty_store`, else new) whose `name@champion` is the template model.

    The tracking URI (MLflow's and MLFLOW_TRACKING_URI, which `rotmnist serve` subprocesses inherit) and the
    working directory (where MLflow puts a new experiment's artifacts) point there while the block runs; they,
    and the experiment the champion was logged in, are restored afterwards.
    """
    import shutil

    import mlflow
    from mlflow import MlflowClient

    from tests.support.tracking import restored_mlflow

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    # chdir first: a store made here keeps its default artifact root ./mlruns in `folder`
    with contextlib.chdir(folder), restored_mlflow():
        if empty_store is None:
            MlflowClient(uri).search_experiments()  # creates the tables
        else:
            shutil.copy(empty_store, folder / "mlflow.db")
        os.environ["MLFLOW_TRACKING_URI"] = uri
        mlflow.set_tracking_uri(uri)
        register_champion(template_classifier(), name)
        yield folder


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """Run `app` with uvicorn on a free loopback port in a thread; yield its base URL."""
    import uvicorn

    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@contextlib.contextmanager
def rotmnist_serve(folder: Path, params: dict, timeout: float = 90.0) -> Iterator[tuple[subprocess.Popen, str]]:
    """The venv's `rotmnist serve` in a subprocess in `folder` with `params`, on a free loopback port.

    Yields the process and its base URL once `/health` answers; its log goes to `folder/serve.log`. It uses
    the MLflow store that MLFLOW_TRACKING_URI names (inside `champion_store`: that store).
    """
    import yaml

    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {k: v for k, v in os.environ.items() if k != "ROTMNIST_STORE_ROOT"}  # the store lives in `folder`
    command = Path(sys.executable).with_name("rotmnist")
    cmd = [str(command), "--params", str(folder / "params.yaml"), "serve", "--port", str(port)]
    with open(folder / "serve.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"rotmnist serve exited ({proc.returncode}):\n{(folder / 'serve.log').read_text()}")
        return get_json(f"{url}/health")[0] == 200

    try:
        wait_for(healthy, timeout)
        yield proc, url
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, wait: float = 30.0) -> None:
    """SIGTERM `proc` and wait for it; SIGKILL it if it is still there after `wait` seconds."""
    proc.terminate()
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def call(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One HTTP request with exactly this body and these headers; return the status and the raw answer."""
    u = urllib.parse.urlsplit(url)
    conn = HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        headers = headers or {}
        chunked = headers.get("Transfer-Encoding") == "chunked"
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        conn.request(method, target, body=body, headers=headers, encode_chunked=chunked)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def http_scope(method: str, path: str, headers: list[tuple[bytes, bytes]], server: str = "127.0.0.1") -> dict:
    """The ASGI scope of one HTTP/1.1 request from loopback, for calling an app in process."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": (server, 80),
    }


async def asgi(
    app, chunks: list[bytes], headers: dict[str, str], path: str = "/score", method: str = "POST"
) -> tuple[int, dict, int]:
    """Send `chunks` as one streamed body to the ASGI `app`, in process: the status, the JSON answer, and chunks
    left unread."""
    scope = http_scope(method, path, [(k.lower().encode(), v.encode()) for k, v in headers.items()])
    left = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive() -> dict:
        return left.pop(0) if left else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), len(left)


def post_json(url: str, data) -> tuple[int, dict]:
    status, raw = call(url, "POST", json.dumps(data).encode(), {"Content-Type": "application/json"})
    return status, json.loads(raw)


def multipart(files: list[tuple[str, str, bytes]], boundary: str = "rotmnist-test-boundary") -> tuple[bytes, str]:
    """A multipart/form-data body of (field, filename, content) files, and its content type."""
    parts = []
    for field, filename, content in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        parts.append(head.encode() + b"Content-Type: image/png\r\n\r\n" + content + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def get_json(url: str) -> tuple[int, dict]:
    status, raw = call(url)
    return status, json.loads(raw)


def wait_for(check, timeout: float = 20.0, every: float = 0.1):
    """Call `check` until it returns something truthy; return that (AssertionError after `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            result = check()
            if result:
                return result
        time.sleep(every)
    raise AssertionError(f"not reached within {timeout} s")


def write_png(path: Path, img: Image.Image) -> Path:
    img.save(path)
    return path
