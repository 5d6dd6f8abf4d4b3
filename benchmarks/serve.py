"""Benchmark of `rotmnist serve` against the HTTP stack's ceiling and `mlflow models serve`, over loopback.

Usage: python -m benchmarks.serve [--duration 10] [--model-name rotmnist-cnn] [--log-requests both]
Uses the repository's MLflow store (MLFLOW_TRACKING_URI wins) and its champion; every server gets the same
requests on MLflow's protocol (`POST /invocations`, `{"inputs": ...}`). The load comes from `wrk` (or `hey`),
native programs that leave the two cores to the server; without either the benchmark says so and stops.

The rows, in one run under the same load: two bare FastAPI + uvicorn apps (`benchmarks/serve_ceiling.py`:
one reads the body only, one decodes its JSON into float32: the ceiling a JSON scoring server can reach),
`rotmnist serve` with the request log on, off, or both in turn (`--log-requests`; on a copy of params.yaml in
a temp folder, its log a SQLite file there, not the repository's), the same logging server fed the same digit as
raw uint8 bytes on `POST /score` (`application/octet-stream`, what a bulk client can send instead of JSON), and
`mlflow models serve`. Prints a
markdown table: time to the first healthy answer, single-image p50/p99 and requests/s at concurrency 1 and
10, the share of the decode ceiling and the multiple of `mlflow models serve` at concurrency 10, and one
256-image batch (best of 5); then the champion alone in this process (one image on one thread, p50, and
batches of 256), the serving goals against these figures, and the rows each logging server wrote and dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digits(n: int) -> np.ndarray:
    """`n` test digits from data/splits/test if it exists, else synthetic strokes (the timing is the same)."""
    x = REPO / "data" / "splits" / "test" / "x.npy"
    if x.exists():
        return np.load(x, mmap_mode="r")[:n].astype(np.uint8)
    rng = np.random.default_rng(0)
    img = np.zeros((n, 28, 28), np.uint8)
    img[:, 6:22, 12:16] = rng.integers(150, 256, size=(n, 1, 1))
    return img


def start(cmd: list[str], health: str, env: dict) -> tuple[subprocess.Popen, float]:
    """Start a server; return it and the seconds until `health` answered 200."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while time.perf_counter() - t0 < 300:
        if proc.poll() is not None:
            sys.exit(f"{cmd[0]} exited: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(health, timeout=1) as r:
                if r.status == 200:
                    return proc, time.perf_counter() - t0
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"{' '.join(cmd)} did not become healthy in 300 s")


def load(tool: str, url: str, body: Path, concurrency: int, seconds: int) -> dict[str, float]:
    """p50 and p99 latency (ms) and requests/s of POSTing `body` (its type from its suffix) for `seconds` at
    `concurrency`."""
    content_type = CONTENT_TYPES[body.suffix]
    if tool == "wrk":
        script = body.with_suffix(".lua")
        script.write_text(
            f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "{content_type}"\n'
            f'local f = io.open("{body}", "rb"); wrk.body = f:read("*a"); f:close()\n'
        )
        cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", str(script), url]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}

        def pct(p: str) -> float:
            value, u = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)$", out, re.M).groups()
            return float(value) * unit[u]

        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if errors:
            sys.exit(f"{url}: {errors.group(1)} requests failed")
        return {"p50": pct("50"), "p99": pct("99"), "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])}
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-T", content_type]
    out = subprocess.run([*cmd, "-D", str(body), url], capture_output=True, text=True, check=True).stdout
    return {
        "p50": float(re.search(r"50%+ in ([\d.]+) secs", out)[1]) * 1e3,
        "p99": float(re.search(r"99%+ in ([\d.]+) secs", out)[1]) * 1e3,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
    }


def serve_params(tmp: Path, log_requests: bool) -> Path:
    """A copy of params.yaml with `serve.log_requests` set; a log that is on goes to a SQLite file in `tmp`."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    serve = params.setdefault("serve", {})
    serve["log_requests"] = log_requests
    if log_requests:
        serve["request_log"] = f"sqlite:///{tmp / 'serving' / 'requests.db'}"
    path = tmp / f"params-log-{'on' if log_requests else 'off'}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def log_rows(base: str) -> dict[str, float]:
    """The request log's rows written and dropped so far, from the server's `GET /metrics`."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        k: float(re.search(rf"^rotmnist_log_rows_{k}(?:_total)? ([\d.e+]+)$", text, re.M)[1])
        for k in ("written", "dropped")
    }


def batch_ms(url: str, body: Path, repeats: int = 5) -> float:
    best, data = float("inf"), body.read_bytes()
    for _ in range(repeats):
        t0 = time.perf_counter()
        req = urllib.request.Request(url, data, {"Content-Type": CONTENT_TYPES[body.suffix]})
        with urllib.request.urlopen(req, timeout=120) as r:
            preds = json.load(r)["predictions"]
        best = min(best, time.perf_counter() - t0)
        assert len(preds) == 256
    return best * 1e3


def load_tool(script: str) -> str:
    """`wrk`, else `hey`; exit naming the package to install when neither is on PATH."""
    tool = next((t for t in ("wrk", "hey") if shutil.which(t)), None)
    if tool is None:
        sys.exit(f"{script} needs a native load generator: apt-get install wrk (or hey)")
    return tool


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per row")
    parser.add_argument("--model-name", default=None, help="registered model (default: params.yaml monitor.model_name)")
    parser.add_argument(
        "--log-requests",
        choices=("on", "off", "both"),
        default="both",
        help="rotmnist serve's request log (serve.log_requests): on, off, or a row for each (default)",
    )
    return parser.parse_args()


CEILING = {
    "read": "bare FastAPI + uvicorn, reading the body only",
    "decode": "bare FastAPI + uvicorn, decoding to float32",
}
DECODE_ROW = CEILING["decode"]
LOG_ON_ROW = "`rotmnist serve`, request log on"  # the server as it runs by default
MLFLOW_ROW = "`mlflow models serve`"
RAW_ROW = "`rotmnist serve`, request log on, raw uint8 body to /score"
CONTENT_TYPES = {".json": "application/json", ".raw": "application/octet-stream"}


def servers(tmp: Path, name: str, log_requests: str) -> dict:
    """Per row's label: a function of the port giving the server's command and its health URL."""

    def bare(app: str):
        return lambda port: (
            [sys.executable, "-m", "benchmarks.serve_ceiling", app, "--port", str(port)],
            f"http://127.0.0.1:{port}/health",
        )

    def rotmnist(params: Path):
        return lambda port: (
            [str(BIN / "rotmnist"), "--params", str(params), "serve", "--port", str(port)],
            f"http://127.0.0.1:{port}/health",
        )

    out = {label: bare(app) for app, label in CEILING.items()}
    log_modes = {"on": [True], "off": [False], "both": [True, False]}[log_requests]
    out |= {
        f"`rotmnist serve`, request log {'on' if on else 'off'}": rotmnist(serve_params(tmp, on)) for on in log_modes
    }
    if log_requests != "off":
        out[RAW_ROW] = rotmnist(serve_params(tmp, True))
    mlflow = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{name}@champion", "--env-manager", "local"]
    out[MLFLOW_ROW] = lambda port: ([*mlflow, "--host", "127.0.0.1", "-p", str(port)], f"http://127.0.0.1:{port}/ping")
    return out


def measure(tool: str, label: str, make, env: dict, bodies: dict[str, Path], duration: int) -> tuple[tuple, dict]:
    """Start one server, load it at concurrency 1 and 10 and time a batch (not the bare apps, which score
    nothing): its row, and its request log's counts. `bodies`: one image and 256 as JSON and as raw bytes."""
    port = free_port()
    cmd, health = make(port)
    proc, startup = start(cmd, health, env)
    raw = label == RAW_ROW
    url = f"http://127.0.0.1:{port}/{'score' if raw else 'invocations'}"
    one, batch = (bodies["one.raw"], bodies["batch.raw"]) if raw else (bodies["one.json"], bodies["batch.json"])
    scores = label not in CEILING.values()
    logged, b = {}, None
    try:
        if scores:
            batch_ms(url, batch, repeats=1)  # warm-up
        c1 = load(tool, url, one, 1, duration)
        c10 = load(tool, url, one, 10, duration)
        if scores:
            b = batch_ms(url, batch)
        if "request log on" in label:
            logged = log_rows(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(30)
    return (label, startup, c1, c10, b), logged


def champion_scorer(name: str):
    """The champion's scoring function as the server calls it on its scoring thread, on one torch thread."""
    import torch

    from rotmnist.serving.model_source import fast_scorer
    from rotmnist.tracking import registry

    torch.set_num_threads(1)
    return fast_scorer(registry.load_model(f"models:/{name}@champion"))


def model_alone(name: str, x: np.ndarray) -> dict[str, float]:
    """The champion's own cost in this process, as the server calls it on its scoring thread (one torch
    thread): p50 of one image (ms, of 500) and images/s in batches of 256 (best of 5)."""
    proba = champion_scorer(name)
    one, batch = x[:1].astype(np.float32), x[:256].astype(np.float32)
    times = []
    for _ in range(520):
        t0 = time.perf_counter()
        proba(one)
        times.append(time.perf_counter() - t0)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        proba(batch)
        best = min(best, time.perf_counter() - t0)
    return {"p50": float(np.median(times[20:])) * 1e3, "batch_rps": len(batch) / best}


def print_table(tool: str, duration: int, rows: list[tuple], logged: dict, model: dict) -> None:
    by = {row[0]: row for row in rows}
    ceiling, base = by[DECODE_ROW][3]["rps"], by[MLFLOW_ROW][3]["rps"]
    print(f"\nLoad: {tool}, {duration} s per row, one thread; {os.cpu_count()} CPU cores shared with the server.\n")
    print(
        "| server | start to healthy (s) | c=1 p50 / p99 (ms) | c=1 req/s | c=10 p50 / p99 (ms) | c=10 req/s "
        "| of the decode ceiling (c=10) | vs mlflow (c=10) | 256-image batch (ms) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, startup, c1, c10, b in rows:
        batch = "" if b is None else f"{b:.0f}"
        print(
            f"| {label} | {startup:.1f} | {c1['p50']:.2f} / {c1['p99']:.2f} | {c1['rps']:,.0f} "
            f"| {c10['p50']:.2f} / {c10['p99']:.2f} | {c10['rps']:,.0f} | {c10['rps'] / ceiling:.0%} "
            f"| {c10['rps'] / base:.1f}x | {batch} |"
        )
    print(
        f"\nThe champion alone (one torch thread): {model['p50']:.2f} ms p50 for one image, "
        f"{model['batch_rps']:,.0f} images/s in batches of 256."
    )
    print_goals(by, model, ceiling, base)
    for label, counts in logged.items():
        print(f"\n{label}: {counts['written']:,.0f} rows written, {counts['dropped']:,.0f} dropped.")


def print_goals(by: dict[str, tuple], model: dict, ceiling: float, base: float) -> None:
    """The serving goals, per `rotmnist serve` row: c=10 at >= 60 % of the decode ceiling's req/s (`ceiling`)
    and >= 4x mlflow's (`base`), c=1 p50 within the model's p50 + the decode app's p50 + 0.5 ms; and the
    request log's cost."""
    p50_goal = model["p50"] + by[DECODE_ROW][2]["p50"] + 0.5
    print(f"\nGoals: c=10 >= 60 % of {ceiling:,.0f} req/s and >= 4x {base:,.0f}; c=1 p50 <= {p50_goal:.2f} ms.")
    for label, (_, _, c1, c10, _) in by.items():
        if label.startswith("`rotmnist serve`"):
            met = [c10["rps"] >= 0.6 * ceiling, c10["rps"] >= 4 * base, c1["p50"] <= p50_goal]
            print(f"- {label}: {', '.join('met' if m else 'missed' for m in met)}")
    on, off = by.get(LOG_ON_ROW), by.get("`rotmnist serve`, request log off")
    if on and off:
        print(f"- the request log's cost at c=10: {1 - on[3]['rps'] / off[3]['rps']:.0%} of throughput (goal <= 10 %)")


def main() -> None:
    args = parse_args()
    tool = load_tool("benchmarks/serve.py")

    from rotmnist.config import load_config

    config = load_config(REPO / "params.yaml")
    name = args.model_name or config.monitor.model_name
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{REPO / 'mlflow.db'}")
    os.environ.setdefault("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    bodies = {f"{n}.{kind}": tmp / f"{n}.{kind}" for n in ("one", "batch") for kind in ("json", "raw")}
    for n, count in (("one", 1), ("batch", 256)):
        bodies[f"{n}.json"].write_text(json.dumps({"inputs": digits(count).tolist()}))
        bodies[f"{n}.raw"].write_bytes(digits(count).astype(np.uint8).tobytes())
    rows, logged = [], {}
    for label, make in servers(tmp, name, args.log_requests).items():
        row, counts = measure(tool, label, make, env, bodies, args.duration)
        rows.append(row)
        if counts:
            logged[label] = counts
        print(f"{label}: done", file=sys.stderr)
    print_table(tool, args.duration, rows, logged, model_alone(name, digits(256)))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
