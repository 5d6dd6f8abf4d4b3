"""The model `rotmnist serve` scores with, and its hot reload when the registry's champion moves.

A new champion is loaded beside the old one and swapped in by one assignment; a load that fails keeps
the old model serving and is reported (`/health` says `stale`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rotmnist.errors import PipelineError, first_line
from rotmnist.serving.openapi import ModelInfo
from rotmnist.tracking import registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    """One loaded model version: its scoring function and what `/version` says about it."""

    proba: Callable[[np.ndarray], np.ndarray]  # float32 (N, 28, 28) 0-255 -> (N, 10) probabilities
    info: ModelInfo

    @property
    def version(self) -> str | None:
        return self.info.version


def fast_scorer(clf: registry.Classifier) -> Callable[[np.ndarray], np.ndarray]:
    """The classifier's torch module called directly (no pyfunc schema round trip), else its predict_proba."""
    import torch

    raw = clf.model.get_raw_model() if hasattr(clf.model, "get_raw_model") else None
    if not isinstance(raw, torch.nn.Module):
        return clf.predict_proba

    def proba(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return raw(torch.from_numpy(x)).numpy()

    return proba


def _load_failures() -> tuple[type[Exception], ...]:
    """What a broken model or a failing store raises while the champion is looked up or loaded: the
    registry's refusals, MLflow's and the database's errors, I/O, and torch's errors from a model that does
    not run. Anything else is a bug and propagates. (Imported when an error is matched, not before.)"""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    return (PipelineError, MlflowException, SQLAlchemyError, OSError, RuntimeError)


class ModelSource:
    """Where the served model comes from: `models:/<name>@champion` (polled for a new version), or a fixed URI."""

    def __init__(self, model_name: str, uri: str | None = None):
        self.model_name = model_name
        self.uri = uri

    @property
    def follows_champion(self) -> bool:
        return self.uri is None

    def _client(self):
        from mlflow import MlflowClient

        return MlflowClient()

    def champion(self) -> str | None:
        """The version the champion alias points to now (None if there is none)."""
        v = registry.champion_version(self._client(), self.model_name)
        return str(v.version) if v is not None else None

    def load_initial(self) -> Served:
        """The champion with the registry's fallback (or the fixed URI); PipelineError if nothing loads."""
        if self.follows_champion:
            clf = registry.load_champion(self.model_name, client=self._client())
            return self._served(clf, self.model_name, clf.version, registry.CHAMPION)
        return self._served(registry.load_model(self.uri), *self._name_version(self.uri))

    def load(self, version: str | None) -> Served:
        """Champion `version` exactly (no fallback: a reload that fails keeps the old model), or the fixed URI."""
        if self.follows_champion:
            clf = registry.load_model(f"models:/{self.model_name}/{version}", version)
            return self._served(clf, self.model_name, version, registry.CHAMPION)
        return self.load_initial()

    def _name_version(self, uri: str) -> tuple[str | None, str | None, str | None]:
        """Name, version and alias of a `models:/` URI (resolved through the registry), else Nones."""
        if not uri.startswith("models:/"):
            return None, None, None
        ref = uri.removeprefix("models:/")
        if "@" in ref:
            name, alias = ref.split("@", 1)
            v = self._client().get_model_version_by_alias(name, alias)
            return name, str(v.version), alias
        name, _, version = ref.partition("/")
        return name, version or None, None

    def _served(self, clf: registry.Classifier, name: str | None, version: str | None, alias: str | None) -> Served:
        run_id = accuracy = None
        if name and version:
            mv = self._client().get_model_version(name, version)
            run_id = mv.tags.get("training_run_id") or mv.run_id
            acc = mv.tags.get("holdout_accuracy")
            accuracy = float(acc) if acc else None
        info = ModelInfo(
            uri=clf.uri, name=name, version=version, alias=alias, training_run_id=run_id, holdout_accuracy=accuracy
        )
        return Served(fast_scorer(clf), info)


@dataclass
class Keeper:
    """Holds the served model and swaps in a new champion; a failed load keeps the old one and is reported."""

    source: ModelSource
    served: Served
    reload_error: str | None = None
    failed_version: str | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def reload(self, retry_failed: bool = True) -> bool:
        """Load the champion's current version if it changed (the fixed URI: always); True if swapped.

        With `retry_failed` False (the poll) a champion version that already failed to load is not tried
        again until the alias moves; `POST /reload` retries it, e.g. after its artifacts were repaired.
        """
        async with self._lock:
            version = None  # unknown while the store cannot say
            try:
                version = await asyncio.to_thread(self.source.champion) if self.source.follows_champion else None
                if self.source.follows_champion and version in (None, self.served.version):
                    self.reload_error = None if version else f"{self.source.model_name} has no champion now"
                    self.failed_version = None
                    return False
                if not retry_failed and version is not None and version == self.failed_version:
                    return False
                new = await asyncio.to_thread(self.source.load, version)
            except _load_failures() as err:  # the old model keeps serving; a bug in our code propagates
                message = f"{type(err).__name__}: {first_line(err)}"
                if message != self.reload_error:
                    log.warning("could not load the new model (%s); still serving %s", message, self.describe())
                self.reload_error, self.failed_version = message, (version if self.source.follows_champion else None)
                return False
            old = self.describe()
            self.served, self.reload_error, self.failed_version = new, None, None
            log.info("now serving %s (was %s)", self.describe(), old)
            return True

    async def poll(self, seconds: float) -> None:
        """Check the champion alias every `seconds` for as long as the app runs (or until a bug stops it)."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.reload(retry_failed=False)
            except Exception:  # not a failed load (reload reports those): said now, not when the task is collected
                log.exception("the champion poll stopped")
                raise

    def describe(self) -> str:
        i = self.served.info
        return f"{i.name} version {i.version}" if i.version else i.uri
