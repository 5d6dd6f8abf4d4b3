"""The server's model keeper: which champion versions a poll and a reload try, without MLflow."""

import asyncio
import logging

import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException

from rotmnist.serving.batcher import Batcher
from rotmnist.serving.model_source import Keeper, Served
from rotmnist.serving.openapi import ModelInfo
from rotmnist.tracking.registry import RegistryError


class FlakySource:
    """A champion alias at `version`; loading raises `error` while `broken` holds the version, and every try is
    counted."""

    model_name = "digits"
    follows_champion = True

    def __init__(self, version: str):
        self.version, self.broken, self.tries = version, set(), []
        self.error: type[Exception] = OSError

    def champion(self) -> str:
        return self.version

    def load(self, version: str) -> Served:
        self.tries.append(version)
        if version in self.broken:
            raise self.error(f"weights of version {version} are missing")
        return served(version)


def served(version: str) -> Served:
    return Served(lambda x: x, ModelInfo(uri=f"models:/digits/{version}", name="digits", version=version))


def broken_champion() -> tuple[FlakySource, Keeper]:
    """A keeper serving version 1 after the alias moved to version 2, whose weights do not load."""
    source = FlakySource("1")
    keeper = Keeper(source, served("1"))
    source.version, source.broken = "2", {"2"}
    return source, keeper


def test_the_poll_tries_a_broken_champion_once_and_a_reload_retries_it():
    source, keeper = broken_champion()

    async def scenario() -> list[bool]:
        polls = [await keeper.reload(retry_failed=False) for _ in range(3)]
        assert source.tries == ["2"]  # a poll does not download the same broken version again and again
        assert keeper.failed_version == "2" and "weights of version 2 are missing" in keeper.reload_error
        assert keeper.served.version == "1"  # the old model keeps serving
        source.broken = set()  # repaired: an explicit reload takes it
        return [*polls, await keeper.reload()]

    assert asyncio.run(scenario()) == [False, False, False, True]
    assert source.tries == ["2", "2"] and keeper.served.version == "2" and keeper.failed_version is None


def test_the_poll_tries_a_new_champion_after_a_broken_one():
    source, keeper = broken_champion()

    async def scenario() -> tuple[bool, bool]:
        first = await keeper.reload(retry_failed=False)
        source.version = "3"  # the alias moved on
        return first, await keeper.reload(retry_failed=False)

    assert asyncio.run(scenario()) == (False, True)
    assert source.tries == ["2", "3"] and keeper.served.version == "3"


@pytest.mark.parametrize("error", [RegistryError, MlflowException, OSError, RuntimeError])
def test_a_broken_model_or_a_failing_store_keeps_the_old_model_and_is_reported(error):
    source, keeper = broken_champion()
    source.error = error
    assert asyncio.run(keeper.reload()) is False
    assert keeper.served.version == "1" and keeper.failed_version == "2"
    assert keeper.reload_error == f"{error.__name__}: weights of version 2 are missing"


def test_a_store_down_while_the_champion_is_looked_up_is_reported():
    source, keeper = broken_champion()

    def down() -> str:
        raise MlflowException("API request to endpoint /api/2.0/mlflow/registered-models/alias failed")

    source.champion = down
    assert asyncio.run(keeper.reload()) is False
    assert keeper.served.version == "1" and keeper.failed_version is None
    assert keeper.reload_error.startswith("MlflowException: API request") and source.tries == []


def test_a_bug_in_our_loading_code_propagates_and_changes_nothing(caplog):
    source, keeper = broken_champion()
    source.error = TypeError  # what a wrong call in our own code raises: not a broken model
    with pytest.raises(TypeError, match="weights of version 2"):
        asyncio.run(keeper.reload())
    assert keeper.served.version == "1" and keeper.reload_error is None and keeper.failed_version is None
    with caplog.at_level(logging.ERROR), pytest.raises(TypeError):
        asyncio.run(keeper.poll(0))  # the poll stops, saying so with the traceback
    assert "the champion poll stopped" in caplog.text and "TypeError" in caplog.text


def test_the_batcher_scores_with_the_configured_torch_threads():
    """`serve.threads` holds where the model runs: on the batcher's scoring thread."""
    seen = []

    def proba(x):
        seen.append(torch.get_num_threads())
        return x

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # what the batcher must change, whatever ran before
    keeper = Keeper(FlakySource("1"), Served(proba, ModelInfo(uri="models:/digits/1", name="digits", version="1")))

    async def scenario():
        batcher = Batcher(keeper, max_images=8, threads=1)
        batcher.start()
        try:
            return await batcher.score(np.zeros((2, 28, 28), np.float32))
        finally:
            await batcher.stop()

    try:
        probs, used = asyncio.run(scenario())
    finally:
        torch.set_num_threads(before)
    assert seen == [1] and probs.shape == (2, 28, 28) and used.version == "1"
