"""The batcher: concurrent requests scored together on one thread, each caller getting its own rows."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import numpy as np

from rotmnist.serving.batcher import Batcher
from rotmnist.serving.model_source import Served


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


def images(value: float, n: int) -> np.ndarray:
    return np.full((n, 28, 28), value, np.float32)


async def scenario(model: GatedModel, sizes: list[int], max_images: int, swap: Served | None = None) -> list:
    """Score a first request, then, while the model runs it, `sizes` more at once; every caller's outcome."""
    keeper = SimpleNamespace(served=Served(model, {"name": "digits", "version": "1"}))
    batcher = Batcher(keeper, max_images=max_images, threads=0)
    batcher.start()
    try:
        first = asyncio.ensure_future(batcher.score(images(100, 1)))
        await asyncio.to_thread(model.started.wait, 10)
        if swap:
            keeper.served = swap  # a reload while a batch runs
        rest = [asyncio.ensure_future(batcher.score(images(i, n))) for i, n in enumerate(sizes)]
        await asyncio.sleep(0.05)  # all of them queued behind the running batch
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
    new = Served(lambda x: np.zeros((len(x), 10), np.float32), {"name": "digits", "version": "2"})
    (first, old), (second, current) = asyncio.run(scenario(model, [1], max_images=8, swap=new))
    assert old.version == "1" and (first == 100).all()
    assert current.version == "2" and (second == 0).all()


def test_a_model_error_reaches_every_caller_of_the_batch_and_the_batcher_keeps_scoring():
    model = GatedModel(fail=True)

    async def failing_then_working() -> tuple[list, np.ndarray]:
        keeper = SimpleNamespace(served=Served(model, {"name": "digits", "version": "1"}))
        batcher = Batcher(keeper, max_images=8, threads=0)
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.score(images(1, 1)))
            await asyncio.to_thread(model.started.wait, 10)
            rest = [asyncio.ensure_future(batcher.score(images(2, 1))) for _ in range(2)]
            await asyncio.sleep(0.05)
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
