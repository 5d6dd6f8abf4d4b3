"""Micro-batching for `rotmnist serve`: concurrent requests scored together on one worker thread.

The worker runs the model on everything that queued while its previous forward pass ran
(`serve.batch_images` at most), so ten clients cost about one forward pass each round instead of ten.
A batch runs on the model current when it starts: a hot reload never changes a batch in flight.
What the server watches of its traffic (`observe`, the metrics' input tilt and predictions) is computed
once per batch on the same thread, after the batch's answers went out: off the event loop and off the
requests' latency. `settled()` waits for the observations of every batch answered so far (a scrape does).
When the server stops, every request not yet answered fails at once with `Stopped` (a 503), rather than
waiting for a model that will not answer it. Serving frameworks batch the same way (Ray Serve's
`@serve.batch`, BentoML's adaptive batching) but bring their own server and process model, where the
service needs only this loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from rotmnist.serving.model_source import Keeper, Served

log = logging.getLogger(__name__)

# observe(x, probs, sizes): a batch's images, their probabilities and each request's number of images
Observer = Callable[[np.ndarray, np.ndarray, list[int]], None]


class Stopped(RuntimeError):
    """The batcher stopped before it scored the request: the server is shutting down."""

    def __init__(self) -> None:
        super().__init__("the server is shutting down")


@dataclass
class _Job:
    x: np.ndarray
    future: asyncio.Future


class Batcher:
    """Scores requests on one worker thread, running together everything that queued meanwhile."""

    def __init__(
        self, keeper: Keeper, max_images: int, wait_s: float = 0.0, threads: int = 1, observe: Observer | None = None
    ):
        self.keeper, self.max_images, self.wait_s, self.threads = keeper, max_images, wait_s, threads
        self.observe = observe
        self._jobs: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="score", initializer=self._init_thread)
        self._task: asyncio.Task | None = None
        self._stopped = False

    def _init_thread(self) -> None:
        """`serve.threads` torch threads on the scoring thread, where the model runs."""
        from rotmnist.learning.device import apply_threads  # imports torch: only once a request is scored

        apply_threads(self.threads)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop scoring: the requests in the running batch and those queued fail with `Stopped` now; then wait
        (off the event loop, so their answers go out meanwhile) for the forward pass that still runs."""
        self._stopped = True
        if self._task:
            self._task.cancel()
            await asyncio.wait([self._task])  # cancelled, it fails its running batch
        queued = list(self._jobs)
        self._jobs.clear()
        _fail(queued, Stopped())
        await asyncio.to_thread(self._pool.shutdown, wait=True)

    async def settled(self) -> None:
        """Wait until the observations of every batch answered so far are made (the scoring thread runs them
        in order); at once when the batcher has stopped."""
        if self._stopped:
            return
        await asyncio.get_running_loop().run_in_executor(self._pool, _nothing)

    @property
    def queued(self) -> int:
        """Requests waiting for the model (not counting the batch it runs now)."""
        return len(self._jobs)

    async def score(self, x: np.ndarray) -> tuple[np.ndarray, Served]:
        """Probabilities (N, 10) for `x`, and the model version that computed them; `Stopped` once stopping."""
        if self._stopped:
            raise Stopped()
        job = _Job(x, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._wake.set()
        return await job.future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.wait_s:
                await asyncio.sleep(self.wait_s)
            while self._jobs:
                await self._score(self._next_batch())

    def _next_batch(self) -> list[_Job]:
        """The oldest job and those after it, while their images fit in `max_images` (the first one always)."""
        batch = [self._jobs.popleft()]
        n = len(batch[0].x)
        while self._jobs and n + len(self._jobs[0].x) <= self.max_images:
            batch.append(self._jobs.popleft())
            n += len(batch[-1].x)
        return batch

    async def _score(self, batch: list[_Job]) -> None:
        """Run the model once on `batch` and hand each job its own rows (or the scorer's exception)."""
        served = self.keeper.served  # the whole batch runs on the model current now
        x = batch[0].x if len(batch) == 1 else np.concatenate([j.x for j in batch])
        try:
            probs = await asyncio.get_running_loop().run_in_executor(self._pool, served.proba, x)
        except asyncio.CancelledError:  # stop(): nobody will hand these jobs their rows
            _fail(batch, Stopped())
            raise
        except Exception as err:
            _fail(batch, err)
            return
        start = 0
        for j in batch:
            if not j.future.done():
                j.future.set_result((probs[start : start + len(j.x)], served))
            start += len(j.x)
        if self.observe is not None:  # after the answers, on the scoring thread, before its next batch
            self._pool.submit(self._observe, x, probs, [len(j.x) for j in batch])

    def _observe(self, x: np.ndarray, probs: np.ndarray, sizes: list[int]) -> None:
        try:
            self.observe(x, probs, sizes)
        except Exception:  # watching the traffic must never stop the scoring
            log.exception("observing a scored batch failed")


def _nothing() -> None:
    pass


def _fail(jobs: list[_Job], err: BaseException) -> None:
    """Hand `err` to each of `jobs` still waiting for its answer."""
    for j in jobs:
        if not j.future.done():
            j.future.set_exception(err)
