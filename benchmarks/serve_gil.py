"""Why one `rotmnist serve` process uses about one of two cores: the event loop and the scoring thread share the GIL.

Usage: python -m benchmarks.serve_gil [--duration 10] [--concurrency 10] [--model-name rotmnist-cnn]

Two measurements on the repository's champion (MLflow store as in `benchmarks/serve.py`):

1. In this process, as the server's scoring thread calls it (one torch thread, 8 images per forward pass):
   forward passes per second alone, and beside a thread that runs pure Python without pause (as a busy
   event loop does), with a Python loop's rate alone and beside the model. The exported graph runs node by
   node in Python, so the scoring thread takes the GIL back between operators and waits for it each time.
2. `wrk` POSTing one digit to `/invocations` at `--concurrency` in all: one `rotmnist serve` process (the
   request log on), then two on their own ports with half the connections each, in one run, after the decode
   ceiling of `benchmarks/serve.py` (a bare FastAPI + uvicorn app decoding the JSON to float32). Each row gives
   requests/s, its share of the ceiling, and the servers' CPU (user + system seconds per wall second, from
   /proc) per process.

Prints two markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.serve import (
    BIN,
    DECODE_ROW,
    LOG_ON_ROW,
    REPO,
    champion_scorer,
    digits,
    free_port,
    load,
    load_tool,
    servers,
    start,
)

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rates(work: list, seconds: float) -> list[float]:
    """Run each callable of `work` in its own thread, over and over for `seconds`; calls per second of each."""
    stop, counts = threading.Event(), [0] * len(work)

    def spin(i: int) -> None:
        while not stop.is_set():
            work[i]()
            counts[i] += 1

    threads = [threading.Thread(target=spin, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return [c / seconds for c in counts]


def in_process(name: str, seconds: float) -> None:
    proba, x = champion_scorer(name), digits(8).astype(np.float32)

    def model() -> None:
        proba(x)

    def python() -> None:
        sum(range(1000))

    (alone,) = rates([model], seconds)
    (py_alone,) = rates([python], seconds)
    beside, py_beside = rates([model, python], seconds)
    print("\n| in this process | forward passes/s (8 images) | Python loops/s |\n|---|---:|---:|")
    print(f"| the champion alone | {alone:,.0f} | |")
    print(f"| a Python loop alone | | {py_alone:,.0f} |")
    print(f"| both, each on its own thread | {beside:,.0f} | {py_beside:,.0f} |")


@contextlib.contextmanager
def serving(makes: list, env: dict) -> Iterator[tuple[list, list[str]]]:
    """Start a server per `benchmarks.serve.servers` entry of `makes`, each on its own port; their processes and
    `/invocations` URLs, stopped on the way out."""
    procs, urls = [], []
    try:
        for make in makes:
            port = free_port()
            cmd, health = make(port)
            procs.append(start(cmd, health, env)[0])
            urls.append(f"http://127.0.0.1:{port}/invocations")
        yield procs, urls
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)


def over_http(name: str, duration: int, concurrency: int, tool: str) -> None:
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    tmp = Path(tempfile.mkdtemp(prefix="serve-gil-"))
    body = tmp / "one.json"
    body.write_text(json.dumps({"inputs": digits(1).tolist()}))
    try:
        with serving([servers(tmp, name, "off")[DECODE_ROW]], env) as (_, urls):
            ceiling = load(tool, urls[0], body, concurrency, duration)["rps"]
        print(f"\nThe decode ceiling at {concurrency} connections: {ceiling:,.0f} req/s.\n")
        print("| `rotmnist serve` processes | connections each | req/s in all | of the ceiling ", end="")
        print("| CPU per process (cores) |")
        print("|---:|---:|---:|---:|---|")
        for n in (1, 2):
            folders = [tmp / f"n{n}-{i}" for i in range(n)]  # each server its own params and request log
            for folder in folders:
                folder.mkdir()
            with serving([servers(folder, name, "on")[LOG_ON_ROW] for folder in folders], env) as (procs, urls):
                each = concurrency // n
                for url in urls:  # warm-up
                    load(tool, url, body, each, 2)
                before, t0 = [cpu_seconds(p.pid) for p in procs], time.perf_counter()
                with ThreadPoolExecutor(n) as pool:
                    results = list(pool.map(load, [tool] * n, urls, [body] * n, [each] * n, [duration] * n))
                wall = time.perf_counter() - t0
                cores = [(cpu_seconds(p.pid) - b) / wall for p, b in zip(procs, before, strict=True)]
            total = sum(r["rps"] for r in results)
            cpu = ", ".join(f"{c:.2f}" for c in cores)
            print(f"| {n} | {each} | {total:,.0f} | {total / ceiling:.0%} | {cpu} |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per row")
    parser.add_argument("--concurrency", type=int, default=10, help="connections in all, split between processes")
    parser.add_argument("--model-name", default=None, help="registered model (default: monitor.model_name)")
    args = parser.parse_args()
    tool = load_tool("benchmarks/serve_gil.py")
    from rotmnist.config import load_config

    name = args.model_name or load_config(REPO / "params.yaml").monitor.model_name
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{REPO / 'mlflow.db'}")
    print(f"{os.cpu_count()} CPU cores; champion {name}; load: {tool}, {args.duration} s per row.")
    in_process(name, 3.0)
    over_http(name, args.duration, args.concurrency, tool)


if __name__ == "__main__":
    main()
