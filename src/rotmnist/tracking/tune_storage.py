"""Where a study lives and how its workers find each other's dead trials: Optuna storage, study, heartbeats.

A journal file by default, or PostgreSQL for workers on many machines (SQLite is refused: unsafe for
parallel workers). A trial records its host, pid and heartbeat; a trial whose worker died is failed,
its MLflow run marked killed, and its params queued once more.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from rotmnist.errors import PipelineError, first_line
from rotmnist.io import pid_alive
from rotmnist.learning.recipe import PIPELINE_RECIPE_KEYS
from rotmnist.spec import check_optuna_storage
from rotmnist.storage.locks import store_lock
from rotmnist.storage.urls import is_postgres, redact

if TYPE_CHECKING:
    from rotmnist.config import Config, TuneConfig
    from rotmnist.paths import Paths

log = logging.getLogger(__name__)

STORAGE_ENV = "ROTMNIST_OPTUNA_STORAGE"
STATE_TAG = "state"  # complete | pruned | failed, on every trial's MLflow run
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_ATTR = "heartbeat"  # a trial's last sign of life (Unix time), on journal storage
HEARTBEAT_KEYS = ("heartbeat_interval", "grace_period")  # how dead workers are found, not what a trial is


def storage_url(config: Config, paths: Paths) -> str:
    """ROTMNIST_OPTUNA_STORAGE if set, else `tune.storage`, else the journal file at the repository root."""
    return os.environ.get(STORAGE_ENV) or config.tune.storage or str(paths.optuna_journal)


def open_storage(
    url: str, paths: Paths, *, heartbeat_interval: int | None = None, grace_period: int | None = None
) -> optuna.storages.BaseStorage:
    """A journal file (a path, or `journal:<path>`) or PostgreSQL (`postgresql://...`); SQLite is refused.

    On PostgreSQL, with `heartbeat_interval`, every worker beats while it runs a trial, and any worker that
    starts a trial first fails the trials silent for `grace_period` seconds, marks their MLflow runs killed
    and queues their params once more (`fail_and_retry`). Journal files get the same from `release_dead_trials`.
    """
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    try:
        check_optuna_storage(url)
    except ValueError as err:
        raise PipelineError(str(err)) from None
    if is_postgres(url):
        return _open_rdb(url, heartbeat_interval, grace_period)
    if "://" in url:
        raise PipelineError(
            f"Optuna storage {url!r} is not supported; use a journal file path (or journal:<path>) or postgresql://..."
        )
    path = journal_path(url, paths)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def journal_path(url: str, paths: Paths) -> Path:
    """The journal file a storage URL names (`journal:<path>` or a path; relative to the store root)."""
    path = Path(url.removeprefix("journal:")).expanduser()
    return path if path.is_absolute() else paths.store_root / path


def study_lock(url: str, paths: Paths, name: str) -> contextlib.AbstractContextManager[None]:
    """The lock workers hold while they create or load study `name` and agree on its parent run."""
    target = url if "://" in url else str(journal_path(url, paths))
    return store_lock(target, f"study {name}")


def _open_rdb(url: str, heartbeat_interval: int | None, grace_period: int | None) -> optuna.storages.RDBStorage:
    """RDBStorage with heartbeats; a PipelineError saying what to check when the database cannot be used."""
    from optuna.storages import RDBStorage

    beats: dict[str, Any] = {}
    if heartbeat_interval is not None:
        beats = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            "heartbeat_stale_trial_callback": fail_and_retry,
        }

    try:
        # Workers started together on a fresh database would race to create Optuna's tables: they take turns.
        with store_lock(url, "optuna tables"), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
            return RDBStorage(url, **beats)
    except PipelineError:
        raise
    except ImportError as err:  # no driver
        raise PipelineError(f"cannot open {redact(url)}: {err}; install psycopg[binary]") from None
    except Exception as err:  # sqlalchemy's OperationalError and friends: server down, bad password
        first = first_line(err)
        raise PipelineError(
            f"cannot open the Optuna storage {redact(url)} ({type(err).__name__}: {first}); "
            "check tune.storage or ROTMNIST_OPTUNA_STORAGE and that the database is running"
        ) from None


def study_name(config: Config, data_hash: str) -> str:
    """`tune.study_name` + a hash of everything that defines the objective (not n_trials, not storage)."""
    t = config.tune
    key = {
        "data": data_hash,
        "tune": t.model_dump(mode="json", exclude={"n_trials", "storage", "study_name", *HEARTBEAT_KEYS}),
        "recipe": config.train.model_dump(mode="json", include=set(PIPELINE_RECIPE_KEYS)),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return f"{t.study_name}-{digest}"


def make_pruner(cfg: TuneConfig) -> optuna.pruners.BasePruner:
    """Median (after `pruner_startup_trials`), a fixed accuracy threshold, or none."""
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner_startup_trials, n_warmup_steps=0)
    if cfg.pruner == "threshold":
        return optuna.pruners.ThresholdPruner(lower=cfg.prune_below)
    return optuna.pruners.NopPruner()


def open_study(config: Config, paths: Paths, name: str) -> optuna.Study:
    """Create or load (`load_if_exists`) the study, with a seeded TPE sampler and the configured pruner."""
    cfg = config.tune
    # A third of the budget (2..10 trials) samples at random before TPE models the results.
    sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=min(10, max(2, cfg.n_trials // 3)))
    return optuna.create_study(
        study_name=name,
        storage=open_storage(
            storage_url(config, paths), paths, heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.grace_period
        ),
        sampler=sampler,
        pruner=make_pruner(cfg),
        direction="maximize",
        load_if_exists=True,
    )


def count_finished(study: optuna.Study) -> int:
    """Trials that count towards the budget: complete + pruned."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def fail_and_retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """For a trial already set to FAIL because its worker died: mark its MLflow run killed, queue its params again.

    The heartbeat callback of PostgreSQL storage, and `release_dead_trials`'s for journal files. A trial is
    retried once (Optuna's `RetryHeartbeatStaleTrialCallback(max_retry=1)`): a configuration that kills
    every worker it lands on must not loop. The retry starts without the dead worker's user attributes.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        try:
            client = MlflowClient()
            client.set_tag(run_id, STATE_TAG, "failed")
            client.set_terminated(run_id, status="KILLED")
        except MlflowException as err:
            log.warning("could not mark MLflow run %s of trial %d as killed: %s", run_id, trial.number, err)
    retry = copy.deepcopy(trial)
    retry.user_attrs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=1)(study, retry)
    log.warning("trial %d: its worker died; marked failed, its params queued again", trial.number)


def retry_of(trial: FrozenTrial) -> int | None:
    """The number of the trial whose params `trial` retries, or None."""
    return trial.system_attrs.get("failed_trial")


def _dead(trial: FrozenTrial, host: str, grace_period: float, now: float) -> bool:
    pid, beat = trial.user_attrs.get("pid"), trial.user_attrs.get(HEARTBEAT_ATTR)
    if trial.user_attrs.get("host") == host and isinstance(pid, int):
        return not pid_alive(pid)  # on this machine the process table is the truth
    return isinstance(beat, int | float) and now - beat > grace_period


def release_dead_trials(study: optuna.Study, grace_period: float) -> list[int]:
    """Fail the RUNNING trials whose worker is gone, mark their MLflow runs killed, and retry them once.

    A trial records its host, pid and (on journal storage) a heartbeat. Its worker is gone when it ran on
    this host and the pid is dead, or when its heartbeat is older than `grace_period` seconds (a worker
    on another machine sharing the journal; their clocks must agree within seconds). Called when a worker
    starts and after each of its trials; on PostgreSQL Optuna's own heartbeats do the same before each trial.
    """
    host, now, released = socket.gethostname(), time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _dead(t, host, grace_period, now):
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker released it first
        released.append(t.number)
        fail_and_retry(study, t)
    return released


@contextlib.contextmanager
def heartbeat(trial: optuna.Trial, interval: float) -> Iterator[None]:
    """While the block runs, record the trial's heartbeat every `interval` seconds (journal storage).

    Optuna's own heartbeats (`heartbeat_interval`, `fail_stale_trials`) exist for RDBStorage only: its
    JournalStorage implements no `BaseHeartbeat`, so on a shared journal file the trial beats here.
    """
    stop = threading.Event()

    def beat() -> None:
        while True:
            trial.set_user_attr(HEARTBEAT_ATTR, time.time())
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
