"""Soak of `rotmnist serve`: the real server under a sustained mixed load while a new champion is promoted.

Usage: python benchmarks/serve_soak.py [--seconds 300] [--concurrency 16] [--promote-every 30] [--window 30] [--check]

The server is the venv's `rotmnist serve` in a subprocess, in a throwaway workspace: a temp folder with its own
SQLite MLflow store whose champion is the template-matching model of tests/support/serving.py. So the soak runs
on a fresh clone without `make repro`, every answer can be checked (the digits sent are drawn, hence known),
and the promotions never touch the repository's registry (a 5-minute run promotes ten times). A promotion
registers the champion's logged model once more as a new version and moves the alias to it; the server,
polling every second (`serve.poll_seconds: 1`), loads it as it would any new champion.

The load comes from one asyncio client (aiohttp, installed with mlflow) keeping `--concurrency` requests in
flight, over a fixed cycle: JSON batches of 8 digits, single digits (`/score` and `/invocations`), uploads
(multipart and a raw `image/png` body) and malformed bodies, each with the answer it must get (the digits, or
the documented 4xx). A Python client rather than `wrk`/`hey`: it mixes the kinds, checks every answer and the
model version that gave it, and runs wherever the tests run (tests/integration/test_serve_soak.py is a 20 s
run of this code). It shares the CPU with the server, so the request rate is the pair's, not the server's.

Prints a markdown row per window (requests, 4xx, 5xx, p50/p99, the server's RSS from /proc, the champion
versions first seen in answers) and a summary with the goals: no 5xx, RSS growth under 10 % after warm-up
(the baseline is taken after the first 10 % of the run), the last minute's p99 within 1.5x of the first
minute's (shorter runs compare their first and last third), every answer as expected. `--check`: exit 1 if
a goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import os
import re
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import uvloop

REPO = Path(__file__).resolve().parents[1]
NAME = "digits"  # the registered model of the throwaway store
MAX_IMAGES = 16  # serve.max_images: the malformed "too many images" request stays small
SERVER_PARAMS = {
    "monitor": {"model_name": NAME},
    "serve": {"poll_seconds": 1, "max_images": MAX_IMAGES},
    "mlflow": {},
}
JSON = "application/json"
WARM_UP = 0.10  # share of the run before the RSS baseline
SPAN = 60.0  # seconds of the first and the last minute compared by p99


@dataclass(frozen=True)
class Shot:
    """One request of the mix and the answer it must get: these digits (status 200), or this error status."""

    name: str  # "kind" or "kind:variant"
    path: str
    body: bytes
    content_type: str
    digits: tuple[int, ...] = ()
    status: int = 200


def mix() -> list[Shot]:
    """The cycle of requests the clients send: per 10, 3 batches, 3 single digits, 2 uploads, 2 malformed."""
    from tests.support.serving import drawing, multipart, png_bytes, prepared

    def body(data: object) -> bytes:
        return json.dumps(data).encode()

    def images(*digits: int) -> list:
        return [prepared(d).tolist() for d in digits]

    upload, upload_type = multipart(
        [("file", "four.png", png_bytes(drawing(4))), ("file", "nine.png", png_bytes(drawing(9)))]
    )
    junk, junk_type = multipart([("file", "junk.png", b"\x89PNG not really")])
    batch = Shot("batch", "/score", body({"images": images(*range(8))}), JSON, tuple(range(8)))
    single = [
        Shot("single", "/score", body({"images": images(3)}), JSON, (3,)),
        Shot("single:invocations", "/invocations", body({"inputs": images(8)}), JSON, (8,)),
    ]
    uploads = [
        Shot("upload", "/score", upload, upload_type, (4, 9)),
        Shot("upload:raw", "/score", png_bytes(drawing(2)), "image/png", (2,)),
    ]
    blank = np.zeros((28, 28), int).tolist()
    malformed = [
        Shot("malformed:json", "/score", b'{"images": [[[0, 0', JSON, status=400),
        Shot("malformed:shape", "/score", body({"images": [blank[:27]]}), JSON, status=422),
        Shot("malformed:too-many", "/score", body({"images": [blank] * (MAX_IMAGES + 1)}), JSON, status=413),
        Shot("malformed:type", "/score", b"1,2,3", "text/csv", status=415),
        Shot("malformed:upload", "/score", junk, junk_type, status=400),
        Shot("malformed:invocations", "/invocations", body({"dataframe_split": "x"}), JSON, status=422),
    ]
    rounds = []
    for i in range(3):  # 3 rounds of 10 go through the 6 malformed bodies once
        single_a, single_b = single[i % 2], single[(i + 1) % 2]
        bad_a, bad_b = malformed[2 * i], malformed[2 * i + 1]
        rounds += [batch, single_a, uploads[0], batch, single_b, bad_a, batch, single_a, uploads[1], bad_b]
    return rounds


def judge(shot: Shot, status: int, raw: bytes) -> tuple[bool, str | None]:
    """Whether the answer is the one `shot` must get, and the model version it names (`/score` only)."""
    if shot.status != 200 or status != 200:
        return status == shot.status, None
    try:
        answer = json.loads(raw)
        if shot.path == "/invocations":
            return tuple(int(np.argmax(p)) for p in answer["predictions"]) == shot.digits, None
        return tuple(p["digit"] for p in answer["predictions"]) == shot.digits, answer["model"]["version"]
    except (ValueError, KeyError, TypeError):  # not the answer's schema: wrong, and the soak goes on
        return False, None


def rss_mib(pid: int) -> float:
    """The resident memory of process `pid` (VmRSS of /proc/<pid>/status), in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)[1]) / 1024


def cpu_seconds(pid: int) -> float:
    """The CPU time process `pid` has used (user + system, from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


@dataclass
class Answers:
    """Every answer of the run in the order they came, as compact arrays (a 5-minute run holds ~400k)."""

    end: array = field(default_factory=lambda: array("d"))  # seconds since the start of the load
    latency: array = field(default_factory=lambda: array("d"))  # seconds
    status: array = field(default_factory=lambda: array("H"))  # 0: no answer (connection error, timeout)
    shot: array = field(default_factory=lambda: array("H"))  # index into the mix
    right: array = field(default_factory=lambda: array("B"))

    def add(self, end: float, latency: float, status: int, shot: int, right: bool) -> None:
        self.end.append(end)
        self.latency.append(latency)
        self.status.append(status)
        self.shot.append(shot)
        self.right.append(right)


@dataclass(frozen=True)
class Window:
    """The answers that came between `start` and `end` (seconds into the load)."""

    start: float
    end: float
    requests: int
    client_errors: int
    server_errors: int
    unanswered: int
    wrong: int
    p50_ms: float
    p99_ms: float
    rss_mib: float
    versions: tuple[str, ...]  # champion versions first seen in an answer in this window


def window(answers: Answers, lo: int, hi: int, start: float, end: float, rss: float, versions) -> Window:
    """Sum up answers[lo:hi]."""
    status = np.asarray(answers.status[lo:hi])
    latency = np.asarray(answers.latency[lo:hi]) * 1e3
    p50, p99 = np.percentile(latency, [50, 99]) if len(latency) else (float("nan"), float("nan"))
    return Window(
        start,
        end,
        requests=hi - lo,
        client_errors=int(((status >= 400) & (status < 500)).sum()),
        server_errors=int((status >= 500).sum()),
        unanswered=int((status == 0).sum()),
        wrong=int((np.asarray(answers.right[lo:hi]) == 0).sum()),
        p50_ms=float(p50),
        p99_ms=float(p99),
        rss_mib=rss,
        versions=tuple(versions),
    )


@dataclass
class Report:
    """What a soak saw: per window, per request, of the promotions and of the server's memory and log."""

    seconds: float
    concurrency: int
    mix: list[Shot]
    answers: Answers
    windows: list[Window]
    rss: list[tuple[float, float]]  # (seconds into the load, MiB); the first is before the load
    promoted: list[tuple[float, str]]  # (seconds into the load when the promotion began, version)
    seen: dict[str, float]  # champion version -> seconds into the load of its first answer
    logged_reloads: int  # "now serving" lines in the server's log
    log_errors: list[str]  # ERROR lines and tracebacks in the server's log
    cpu: dict[str, float]  # CPU seconds of the server and of the client during the load

    @property
    def requests(self) -> int:
        return len(self.answers.end)

    @property
    def server_errors(self) -> int:
        return sum(w.server_errors for w in self.windows)

    @property
    def unanswered(self) -> int:
        return sum(w.unanswered for w in self.windows)

    @property
    def wrong(self) -> int:
        return sum(w.wrong for w in self.windows)

    def statuses(self) -> dict[str, Counter]:
        """Per request name of the mix: how many answers had each status."""
        counts: dict[str, Counter] = {shot.name: Counter() for shot in self.mix}
        for i, status in zip(self.answers.shot, self.answers.status, strict=True):
            counts[self.mix[i].name][status] += 1
        return counts

    def by_kind(self) -> dict[str, Counter]:
        """Per kind (batch, single, upload, malformed): how many answers had each status."""
        kinds: dict[str, Counter] = {}
        for name, counts in self.statuses().items():
            kinds.setdefault(name.split(":")[0], Counter()).update(counts)
        return kinds

    @property
    def rss_baseline(self) -> float:
        """The server's RSS after warm-up: the first sample after WARM_UP of the run."""
        return next(mib for t, mib in self.rss if t >= WARM_UP * self.seconds)

    @property
    def rss_growth(self) -> float:
        return self.rss[-1][1] / self.rss_baseline - 1

    @property
    def span(self) -> float:
        """The seconds at each end of the run whose p99 are compared: a minute, or a third of a short run."""
        return min(SPAN, self.seconds / 3)

    def p99_ms(self, start: float, end: float) -> float:
        end_times = np.asarray(self.answers.end)
        latency = np.asarray(self.answers.latency)[(end_times >= start) & (end_times < end)]
        return float(np.percentile(latency, 99) * 1e3)

    def goals(self) -> list[tuple[str, str, str, bool]]:
        """(goal, target, result, met) of each goal of the soak."""
        first, last = self.p99_ms(0, self.span), self.p99_ms(self.seconds - self.span, float("inf"))
        return [
            (
                "5xx answers (and requests left unanswered)",
                "0",
                f"{self.server_errors} ({self.unanswered})",
                self.server_errors + self.unanswered == 0,
            ),
            (
                f"server RSS growth after warm-up ({self.rss_baseline:.0f} MiB at {WARM_UP * 100:.0f} % of the run)",
                "< 10 %",
                f"{self.rss_growth * 100:+.1f} %",
                self.rss_growth < 0.10,
            ),
            (
                f"p99 of the last {self.span:.0f} s / of the first {self.span:.0f} s",
                "≤ 1.5x",
                f"{last / first:.2f}x ({last:.1f} / {first:.1f} ms)",
                last <= 1.5 * first,
            ),
            (
                "answers as expected (the right digits, the documented 4xx)",
                "all",
                f"{self.requests - self.wrong:,} of {self.requests:,}",
                self.wrong == 0,
            ),
        ]


class Soak:
    """One soak run against a started server: the clients, the promoter, the RSS sampler and the windows."""

    def __init__(
        self,
        url: str,
        pid: int,
        seconds: float,
        concurrency: int,
        promote_every: float,
        window: float,
        on_window: Callable[[Window], None] | None = None,
    ):
        self.url, self.pid = url, pid
        self.seconds, self.concurrency = seconds, concurrency
        self.promote_every, self.window_seconds = promote_every, window
        self.on_window = on_window
        self.mix = mix()
        self.answers = Answers()
        self.rss: list[tuple[float, float]] = [(-1.0, rss_mib(pid))]
        self.promoted: list[tuple[float, str]] = []
        self.seen: dict[str, float] = {}
        self.windows: list[Window] = []
        self.t0 = 0.0
        self.cpu: dict[str, float] = {}

    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self.t0 = time.perf_counter()
            cpu = cpu_seconds(self.pid), time.process_time()
            turns = itertools.count()
            sampler = asyncio.create_task(self.sample())
            clients = [self.client(session, turns) for _ in range(self.concurrency)]
            await asyncio.gather(*clients, self.promote(), self.report())  # each ends when the time is up
            sampler.cancel()
        self.cpu = {"server": cpu_seconds(self.pid) - cpu[0], "client": time.process_time() - cpu[1]}
        self.rss.append((self.now(), rss_mib(self.pid)))
        self.close_window(len(self.answers.end), self.now())

    async def client(self, session: aiohttp.ClientSession, turns: itertools.count) -> None:
        """Send the mix's requests one after the other until the run's time is up."""
        while self.now() < self.seconds:
            i = next(turns) % len(self.mix)
            shot = self.mix[i]
            start = time.perf_counter()
            try:
                async with session.post(
                    self.url + shot.path, data=shot.body, headers={"Content-Type": shot.content_type}
                ) as answer:
                    status, raw = answer.status, await answer.read()
            except (aiohttp.ClientError, TimeoutError):
                status, raw = 0, b""
            end = time.perf_counter()
            right, version = judge(shot, status, raw)
            if version is not None and version not in self.seen:
                self.seen[version] = end - self.t0
            self.answers.add(end - self.t0, end - start, status, i, right)

    async def promote(self) -> None:
        """Promote a new champion every `promote_every` seconds of the run."""
        from tests.support.serving import promote_again

        async for _ in self.ticks(self.promote_every):
            started = self.now()
            version = await asyncio.to_thread(promote_again, NAME)
            self.promoted.append((started, version))

    async def sample(self) -> None:
        """The server's RSS every second."""
        while True:
            await asyncio.sleep(1.0)
            self.rss.append((self.now(), rss_mib(self.pid)))

    async def report(self) -> None:
        """Close each window but the last (the run's end closes that one) as its time comes."""
        async for at in self.ticks(self.window_seconds):
            self.close_window(bisect.bisect_left(self.answers.end, at), at)

    async def ticks(self, every: float) -> AsyncIterator[float]:
        """Wake at each multiple of `every` seconds into the run, before its end; yield that time."""
        for k in itertools.count(1):
            at = k * every
            if at >= self.seconds:
                return
            await asyncio.sleep(at - self.now())
            yield at

    def close_window(self, hi: int, end: float) -> None:
        """Sum up the answers since the last window, up to `hi` (the first answer at or after `end`)."""
        lo = sum(w.requests for w in self.windows)
        start = self.windows[-1].end if self.windows else 0.0
        versions = [v for v, t in self.seen.items() if start <= t < end]
        w = window(self.answers, lo, hi, start, end, self.rss[-1][1], versions)
        self.windows.append(w)
        if self.on_window:
            self.on_window(w)


def server_log(path: Path) -> tuple[int, list[str]]:
    """Reloads ("now serving" lines) and errors (ERROR lines, tracebacks) in the server's log."""
    lines = path.read_text().splitlines()
    errors = [line for line in lines if " ERROR " in line or line.startswith("Traceback")]
    return sum("now serving" in line for line in lines), errors


def soak(
    folder: Path,
    seconds: float = 300,
    concurrency: int = 16,
    promote_every: float = 30,
    window: float = 30,
    empty_store: Path | None = None,
    on_window: Callable[[Window], None] | None = None,
) -> Report:
    """Soak a `rotmnist serve` started in `folder` (a throwaway workspace) and report what it saw.

    `empty_store` is an initialised empty SQLite MLflow store to copy (else one is made); `on_window` is
    called with each window as it closes.
    """
    from tests.support.serving import champion_store, rotmnist_serve

    with champion_store(folder, empty_store, NAME), rotmnist_serve(folder, SERVER_PARAMS) as (proc, url):
        run = Soak(url, proc.pid, seconds, concurrency, promote_every, window, on_window)
        uvloop.run(run.run())
    logged, errors = server_log(folder / "serve.log")
    return Report(
        seconds,
        concurrency,
        run.mix,
        run.answers,
        run.windows,
        run.rss,
        run.promoted,
        run.seen,
        logged,
        errors,
        run.cpu,
    )


def print_window(w: Window) -> None:
    rate = w.requests / (w.end - w.start) if w.end > w.start else 0.0
    print(
        f"| {w.start:.0f}–{w.end:.0f} | {w.requests:,} | {rate:,.0f} | {w.client_errors:,} | {w.server_errors} "
        f"| {w.unanswered} | {w.p50_ms:.1f} | {w.p99_ms:.1f} | {w.rss_mib:.0f} | {', '.join(w.versions)} |",
        flush=True,
    )


def print_summary(report: Report) -> None:
    print("\n| kind | requests | statuses |\n|---|---:|---|")
    for kind, counts in report.by_kind().items():
        statuses = ", ".join(f"{s or 'none'}: {n:,}" for s, n in sorted(counts.items()))
        print(f"| {kind} | {sum(counts.values()):,} | {statuses} |")
    lags = [report.seen[v] - t for t, v in report.promoted if v in report.seen]
    lag = f" (first answer {min(lags):.1f}–{max(lags):.1f} s after the promotion)" if lags else ""
    print(
        f"\nRequests: {report.requests:,} in {report.seconds:.0f} s ({report.requests / report.seconds:,.0f}/s). "
        f"Promotions: {len(report.promoted)}; new versions seen in answers: {len(report.seen) - 1}{lag}; "
        f"reloads in the server's log: {report.logged_reloads}; errors in its log: {len(report.log_errors)}. "
        f"Server RSS: {report.rss[0][1]:.0f} MiB before the load, {report.rss_baseline:.0f} MiB after warm-up, "
        f"{report.rss[-1][1]:.0f} MiB at the end. CPU during the load: server {report.cpu['server']:.0f} s, "
        f"client {report.cpu['client']:.0f} s."
    )
    for line in report.log_errors[:5]:
        print(f"    {line}")
    print("\n| goal | target | result | |\n|---|---|---|---|")
    for goal, target, result, met in report.goals():
        print(f"| {goal} | {target} | {result} | {'PASS' if met else 'MISS'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300, help="length of the load")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--promote-every", type=float, default=30, help="seconds between promotions")
    parser.add_argument("--window", type=float, default=30, help="seconds per row of the table")
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal is missed")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))  # the template model and the server helpers are the tests' (tests/support)

    print(
        f"Load: one asyncio client, {args.concurrency} requests in flight, a promotion every "
        f"{args.promote_every:g} s, {args.seconds:g} s; {os.cpu_count()} CPU cores shared by client and server.\n"
    )
    print(
        "| window (s) | requests | req/s | 4xx | 5xx | unanswered | p50 (ms) | p99 (ms) | server RSS (MiB) "
        "| new champion seen |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory(prefix="serve-soak-") as tmp:
        report = soak(
            Path(tmp), args.seconds, args.concurrency, args.promote_every, args.window, on_window=print_window
        )
    print_summary(report)
    if args.check and not all(met for *_, met in report.goals()):
        sys.exit(1)


if __name__ == "__main__":
    main()
