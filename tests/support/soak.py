"""A soak of the real `rotmnist serve`: a sustained mixed load from one asyncio client while a new champion is promoted.

The server runs in a subprocess in a throwaway workspace whose champion is the template-matching model of
tests/support/serving.py. Shared by the soak benchmark (`python -m benchmarks.serve_soak`) and its shortened run
in the integration tests.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import uvloop

from tests.support.serving import champion_store, promote_again, rotmnist_serve
from tests.support.soak_mix import MAX_IMAGES, NAME, Answers, Report, Window, cpu_seconds, judge, mix, rss_mib, window

SERVER_PARAMS = {
    "monitor": {"model_name": NAME},
    "serve": {"poll_seconds": 1, "max_images": MAX_IMAGES},
    "mlflow": {},
}


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
