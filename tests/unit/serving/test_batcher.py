"""The batcher: concurrent requests scored together on one thread, each caller getting its own rows."""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace

import numpy as np

from rotmnist.config import ServeConfig
from rotmnist.serving.app import create_app
from rotmnist.serving.batcher import Batcher
from rotmnist.serving.model_source import Served
from rotmnist.serving.openapi import ModelInfo
from tests.support.serving import asgi


class GatedModel:
    """A fake model whose first forward pass waits for `release`, so that requests queue behind it.

    Row i of its answer is image i's first pixel repeated: a caller can tell its own rows from others'.
    """

    def __init__(self, fail: bool = False):
        self.started, self.release, self.fail = threading.Event(), threading.Event(), fail
        self.batches: list[int] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(len(x))
        if len(self.batches) == 1:
            self.started.set()
            self.release.wait(10)
        if self.fail:
            raise RuntimeError("weights went missing")
        return np.repeat(x[:, 0, :1], 10, axis=1)


def served(model, version: str = "1") -> Served:
    return Served(model, ModelInfo(uri=f"models:/digits/{version}", name="digits", version=version))


def images(value: float, n: int) -> np.ndarray:
    return np.full((n, 28, 28), value, np.float32)


async def queued(batcher: Batcher, n: int) -> None:
    """Return once `n` requests wait behind the running batch (the event loop runs their `score` calls)."""
    while batcher.queued < n:
        await asyncio.sleep(0)


async def scenario(model: GatedModel, sizes: list[int], max_images: int, swap: Served | None = None) -> list:
    """Score a first request, then, while the model runs it, `sizes` more at once; every caller's outcome."""
    keeper = SimpleNamespace(served=served(model))
    batcher = Batcher(keeper, max_images=max_images, threads=0)
    batcher.start()
    try:
        first = asyncio.ensure_future(batcher.score(images(100, 1)))
        await asyncio.to_thread(model.started.wait, 10)
        if swap:
            keeper.served = swap  # a reload while a batch runs
        rest = [asyncio.ensure_future(batcher.score(images(i, n))) for i, n in enumerate(sizes)]
        await queued(batcher, len(sizes))  # all of them behind the running batch
        model.release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)
    finally:
        await batcher.stop()


def test_requests_queued_meanwhile_are_scored_in_one_batch_and_each_gets_its_own_rows():
    model = GatedModel()
    sizes = [2, 1, 3]
    (first, _), *rest = asyncio.run(scenario(model, sizes, max_images=8))
    assert model.batches == [1, 6]  # one forward pass for the three requests that queued
    assert first.shape == (1, 10) and (first == 100).all()
    for i, (n, (probs, served)) in enumerate(zip(sizes, rest, strict=True)):
        assert probs.shape == (n, 10) and (probs == i).all()
        assert served.version == "1"


def test_a_batch_holds_at_most_max_images_and_a_larger_request_runs_alone():
    model = GatedModel()
    sizes = [2, 2, 1, 5, 1]
    _, *rest = asyncio.run(scenario(model, sizes, max_images=4))
    assert model.batches == [1, 4, 1, 5, 1]  # in arrival order; a request over the limit is not split
    assert [len(probs) for probs, _ in rest] == sizes
    assert [int(probs[0, 0]) for probs, _ in rest] == list(range(len(sizes)))


def test_a_batch_finishes_on_the_model_it_started_with_and_the_next_uses_the_new_one():
    model = GatedModel()
    new = served(lambda x: np.zeros((len(x), 10), np.float32), "2")
    (first, old), (second, current) = asyncio.run(scenario(model, [1], max_images=8, swap=new))
    assert old.version == "1" and (first == 100).all()
    assert current.version == "2" and (second == 0).all()


def test_a_model_error_reaches_every_caller_of_the_batch_and_the_batcher_keeps_scoring():
    model = GatedModel(fail=True)

    async def failing_then_working() -> tuple[list, np.ndarray]:
        keeper = SimpleNamespace(served=served(model))
        batcher = Batcher(keeper, max_images=8, threads=0)
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.score(images(1, 1)))
            await asyncio.to_thread(model.started.wait, 10)
            rest = [asyncio.ensure_future(batcher.score(images(2, 1))) for _ in range(2)]
            await queued(batcher, 2)
            model.release.set()
            outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
            model.fail = False
            probs, _ = await batcher.score(images(3, 2))
            return outcomes, probs
        finally:
            await batcher.stop()

    outcomes, probs = asyncio.run(failing_then_working())
    assert [type(o) for o in outcomes] == [RuntimeError] * 3
    assert all(str(o) == "weights went missing" for o in outcomes)
    assert model.batches == [1, 2, 2] and (probs == 3).all()


def test_stopping_answers_the_running_and_the_queued_requests_503_at_once():
    """A server that stops fails the requests it will not score, at once: none waits for the shutdown timeout."""
    model = GatedModel()
    request = ([json.dumps({"images": [images(0, 1)[0].tolist()]}).encode()], {"content-type": "application/json"})

    async def stopped_midway() -> tuple[list, tuple, bool]:
        keeper = SimpleNamespace(served=served(model))
        keeper.source = SimpleNamespace(follows_champion=False)
        app = create_app(keeper, ServeConfig(poll_seconds=0))
        batcher = app.state.batcher
        batcher.start()
        running = asyncio.ensure_future(asgi(app, *request))
        await asyncio.to_thread(model.started.wait, 10)
        queued = asyncio.ensure_future(asgi(app, *request))
        while batcher.queued == 0:  # until the second request waits behind the running one
            await asyncio.sleep(0)
        stopping = asyncio.ensure_future(batcher.stop())
        # answered while the model still holds the first batch (the timeout only keeps a regression from hanging)
        answers = await asyncio.wait_for(asyncio.gather(running, queued), 10)
        still_running = not stopping.done()
        late = await asgi(app, *request)  # arrives while stopping: refused without queueing
        model.release.set()
        await stopping
        return answers, late, still_running

    answers, late, still_running = asyncio.run(stopped_midway())
    refused = (503, {"error": "the server is shutting down; try again"}, 0)
    assert answers == [refused, refused] and late == refused
    assert still_running  # stop() waits for the forward pass in its thread, but not to answer
    assert model.batches == [1]  # the queued request never reached the model


def test_each_batch_is_observed_once_on_the_scoring_thread_after_its_answers_and_settled_waits_for_it():
    """The metrics' work is per batch, not per request, and never on the event loop or before an answer."""
    model, seen = GatedModel(), []

    def observe(x: np.ndarray, probs: np.ndarray, sizes: list[int]) -> None:
        seen.append((len(x), probs[:, 0].tolist(), sizes, threading.current_thread().name))

    async def observed() -> tuple[list, list]:
        keeper = SimpleNamespace(served=served(model))
        batcher = Batcher(keeper, max_images=8, threads=0, observe=observe)
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.score(images(100, 1)))
            await asyncio.to_thread(model.started.wait, 10)
            rest = [asyncio.ensure_future(batcher.score(images(i, n))) for i, n in enumerate([2, 1])]
            await queued(batcher, 2)
            model.release.set()
            await asyncio.gather(first, *rest)
            await batcher.settled()
        finally:
            await batcher.stop()
        await asyncio.wait_for(batcher.settled(), 1)  # a stopped batcher has nothing to wait for
        return list(seen), model.batches

    seen, batches = asyncio.run(observed())
    assert batches == [1, 3]
    assert [(n, p, s) for n, p, s, _ in seen] == [(1, [100.0], [1]), (3, [0.0, 0.0, 1.0], [2, 1])]
    assert all(thread.startswith("score") for *_, thread in seen)


def test_an_observer_that_fails_is_logged_and_scoring_goes_on(caplog):
    def observe(x, probs, sizes):
        raise ValueError("no tilt today")

    async def twice() -> list:
        keeper = SimpleNamespace(served=served(lambda x: np.ones((len(x), 10), np.float32)))
        batcher = Batcher(keeper, max_images=8, threads=0, observe=observe)
        batcher.start()
        try:
            out = [(await batcher.score(images(1, 1)))[0] for _ in range(2)]
            await batcher.settled()
            return out
        finally:
            await batcher.stop()

    out = asyncio.run(twice())
    assert [o.shape for o in out] == [(1, 10), (1, 10)]
    assert caplog.text.count("observing a scored batch failed") == 2 and "no tilt today" in caplog.text
