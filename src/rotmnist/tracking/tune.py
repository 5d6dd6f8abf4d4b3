"""The Optuna sweep (seeded TPE, pruned on per-epoch validation accuracy), one MLflow run per trial.

One parent MLflow run per study; every trial is a nested child run with its params, per-epoch metrics,
latency and state (complete / pruned / failed). The study lives in a journal file by default (or a
PostgreSQL / journal URL for parallel workers) and resumes: a sweep killed mid-way and started again
ends with exactly `tune.n_trials` finished (complete + pruned) trials. Its name carries a hash of what
defines the objective (data, search space, budget), so raising `n_trials` extends the same study while
any other change starts a fresh one. `run_sweep` is shared by the stage `tune` and by `learn_model`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from rotmnist.errors import PipelineError, first_line, retry
from rotmnist.io import Dataset, pid_alive
from rotmnist.learning.training import (
    HYPER_KEYS,
    PIPELINE_RECIPE_KEYS,
    Hyper,
    fit,
    hyper_dict,
    latency,
    recipe,
    resolve_device,
    source_folds,
    subsample_sources,
)
from rotmnist.spec import CNN_CHOICES, check_optuna_storage, describe
from rotmnist.tracking import store

if TYPE_CHECKING:
    import torch

    from rotmnist.config import Config, TuneConfig
    from rotmnist.paths import Paths

log = logging.getLogger(__name__)

STORAGE_ENV = "ROTMNIST_OPTUNA_STORAGE"
PARENT_ATTR = "mlflow_parent_run_id"
STATE_TAG = "state"  # complete | pruned | failed, on every trial's MLflow run
EPOCH_METRICS = (
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "epoch_seconds",
    "epoch_images",
    "images_per_second",
)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PARENT_SETTLE_SECONDS = 0.5
ROLE_TAG = "role"  # "sweep" on a study's parent run
HEARTBEAT_ATTR = "heartbeat"  # a trial's last sign of life (Unix time), on journal storage
RDB_OPEN_ATTEMPTS = 4
HEARTBEAT_KEYS = ("heartbeat_interval", "grace_period")  # how dead workers are found, not what a trial is


# ---- storage and study ----------------------------------------------------------------------------


def storage_url(config: Config, paths: Paths) -> str:
    """ROTMNIST_OPTUNA_STORAGE if set, else `tune.storage`, else the journal file at the repository root."""
    return os.environ.get(STORAGE_ENV) or config.tune.storage or str(paths.optuna_journal)


def is_rdb(url: str) -> bool:
    """Whether an Optuna storage URL names PostgreSQL (Optuna's heartbeats) rather than a journal file."""
    return url.lower().startswith(("postgresql://", "postgresql+"))


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
    if is_rdb(url):
        return _open_rdb(url, heartbeat_interval, grace_period)
    if "://" in url:
        raise PipelineError(
            f"Optuna storage {url!r} is not supported; use a journal file path (or journal:<path>) or postgresql://..."
        )
    path = Path(url.removeprefix("journal:")).expanduser()
    path = path if path.is_absolute() else paths.store_root / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _open_rdb(url: str, heartbeat_interval: int | None, grace_period: int | None) -> optuna.storages.RDBStorage:
    """RDBStorage with heartbeats; a PipelineError saying what to check when the database cannot be used."""
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import IntegrityError

    beats: dict[str, Any] = {}
    if heartbeat_interval is not None:
        beats = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            "heartbeat_stale_trial_callback": fail_and_retry,
        }

    def open_once() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, **beats)

    try:
        # Workers started together on a fresh database race to create Optuna's tables; the loser's
        # CREATE TABLE hits a unique key. A moment later the tables exist and opening succeeds.
        return retry(open_once, IntegrityError, RDB_OPEN_ATTEMPTS, 0.5)
    except ImportError as err:  # no driver
        raise PipelineError(f"cannot open {store.redact(url)}: {err}; install psycopg[binary]") from None
    except Exception as err:  # sqlalchemy's OperationalError and friends: server down, bad password
        first = first_line(err)
        raise PipelineError(
            f"cannot open the Optuna storage {store.redact(url)} ({type(err).__name__}: {first}); "
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
    """While the block runs, record the trial's heartbeat every `interval` seconds (journal storage)."""
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


# ---- the search space -----------------------------------------------------------------------------


def suggest(trial: optuna.Trial, cfg: TuneConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sample a model spec and its optimiser settings from `tune.space` (family-specific params only)."""
    space = cfg.space
    family = trial.suggest_categorical("family", list(cfg.families))
    spec: dict[str, Any] = {"family": family}
    if family == "cnn":
        for key in CNN_CHOICES:
            spec[key] = trial.suggest_categorical(key, list(getattr(space.cnn, key)))
        spec["dropout"] = trial.suggest_float("dropout", *space.dropout)
    elif family == "mlp":
        for key in ("layers", "width"):
            spec[key] = trial.suggest_categorical(key, list(getattr(space.mlp, key)))
        spec["dropout"] = trial.suggest_float("dropout", *space.dropout)
    hyper = {
        "lr": trial.suggest_float("lr", *space.lr, log=True),
        "weight_decay": trial.suggest_float("weight_decay", *space.weight_decay, log=True),
        "batch_size": trial.suggest_categorical("batch_size", list(space.batch_size)),
    }
    return spec, hyper


def params_to_choice(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a trial's flat params back into (model spec, optimiser settings)."""
    spec = {k: v for k, v in params.items() if k not in HYPER_KEYS}
    return spec, {k: params[k] for k in HYPER_KEYS}


def run_name(number: int | None, spec: dict[str, Any], hyper: dict[str, Any]) -> str:
    """e.g. `t003-cnn-b2-c16-k3-d128-lr3e-03-bs256`: the family and key params at a glance."""
    prefix = f"t{number:03d}-" if number is not None else ""
    return f"{prefix}{describe(spec)}-lr{hyper['lr']:.0e}-bs{hyper['batch_size']}"


# ---- the sweep ------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """What a sweep found: the best trial's choice and the study's counts."""

    study: optuna.Study
    spec: dict[str, Any]
    hyper: dict[str, Any]
    value: float
    best_trial: int
    parent_run_id: str
    counts: dict[str, int]


def make_folds(train: Dataset, val: Dataset | None, cv_folds: int, seed: int) -> list[tuple[Dataset, Dataset]]:
    """(train, validation) pairs: the given split when cv_folds == 1, else k folds of `train` by source image."""
    if cv_folds == 1:
        if val is None or len(val) == 0:
            raise PipelineError("the sweep needs a non-empty validation set (or tune.cv_folds > 1)")
        return [(train, val)]
    return [(train.take(a), train.take(b)) for a, b in source_folds(train, cv_folds, seed)]


def _parent_run(study: optuna.Study, name: str, tags: dict[str, str]) -> str:
    """The sweep's parent MLflow run: the study's own when it still exists, else a new one."""
    import mlflow
    from mlflow.exceptions import MlflowException

    run_id = study.user_attrs.get(PARENT_ATTR)
    if run_id:
        try:
            if mlflow.get_run(run_id).info.lifecycle_stage == "active":
                return run_id
        except MlflowException:
            pass
        log.warning("the study's parent MLflow run %s is missing from this store; starting a new one", run_id)
    with mlflow.start_run(run_name=f"sweep-{name}", tags=tags | {ROLE_TAG: "sweep"}) as run:
        pass
    # Workers started together may each have created a parent: after a moment every worker adopts the
    # oldest active one of this study (the same for all), and deletes its own if it is not that one.
    time.sleep(PARENT_SETTLE_SECONDS)
    parents = mlflow.search_runs(
        filter_string=f"tags.study = '{name}' and tags.{ROLE_TAG} = 'sweep'", output_format="list"
    )
    winner = min(parents, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if parents else run.info.run_id
    if winner != run.info.run_id:
        log.info("another worker started this sweep's parent run %s; using it", winner)
        mlflow.delete_run(run.info.run_id)
    study.set_user_attr(PARENT_ATTR, winner)
    return winner


def _flat_params(config: Config, spec: dict[str, Any], hp: Hyper, n_folds: int, device: torch.device) -> dict[str, Any]:
    return {
        **spec,
        **hyper_dict(hp, device),
        "train_fraction": config.tune.train_fraction,
        "folds": n_folds,
    }


def _objective(
    config: Config,
    folds: list[tuple[Dataset, Dataset]],
    parent_id: str,
    tags: dict[str, str],
    device: Any,
    inputs: tuple[Any, ...],
    beats: bool,
):
    """The study's objective: train one sampled configuration in a nested MLflow run; return its val accuracy.

    With `beats` (journal storage) the trial records a heartbeat every `tune.heartbeat_interval` seconds.
    """
    cfg, host, pid = config.tune, socket.gethostname(), os.getpid()

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("host", host)
        trial.set_user_attr("pid", pid)
        if not beats:
            return _run_trial(trial)
        with heartbeat(trial, cfg.heartbeat_interval):
            return _run_trial(trial)

    def _run_trial(trial: optuna.Trial) -> float:
        import mlflow

        spec, hyper = suggest(trial, cfg)
        hp = recipe(config, hyper, cfg.epochs, PIPELINE_RECIPE_KEYS)
        name = run_name(trial.number, spec, hyper)
        run_tags = tags | {"trial_number": str(trial.number), "family": spec["family"]}
        pruned: optuna.TrialPruned | None = None
        with mlflow.start_run(run_name=name, nested=True, parent_run_id=parent_id, tags=run_tags) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            mlflow.log_params(_flat_params(config, spec, hp, len(folds), device))
            log_inputs(*inputs)
            try:
                value = _train_folds(trial, folds, spec, hp, cfg, device, name)
                mlflow.set_tag(STATE_TAG, "complete")
                return value
            except optuna.TrialPruned as err:
                mlflow.set_tag(STATE_TAG, "pruned")
                pruned = err
            except BaseException:
                mlflow.set_tag(STATE_TAG, "failed")
                raise
        raise pruned

    return objective


def _train_folds(trial, folds, spec, hp: Hyper, cfg: TuneConfig, device, name: str) -> float:
    import mlflow

    scores = []
    for f, (train, val) in enumerate(folds):

        def on_epoch(m: dict[str, float], f: int = f) -> None:
            step = f * hp.epochs + int(m["epoch"])
            mlflow.log_metrics({k: m[k] for k in EPOCH_METRICS if k in m}, step=step)
            trial.report(m["val_accuracy"], step)
            # After the last epoch the trial's work is done: never prune it then, let it complete.
            if step < len(folds) * hp.epochs and trial.should_prune():
                raise optuna.TrialPruned(f"val accuracy {m['val_accuracy']:.4f} at step {step}")

        fitted = fit(spec, train, val, hp, device=device, seed=cfg.seed + f, on_epoch=on_epoch, desc=name)
        scores.append(fitted.history[-1]["val_accuracy"])
    value = float(np.mean(scores))
    n_params = sum(p.numel() for p in fitted.model.parameters())
    mlflow.log_metrics({"objective_val_accuracy": value, "n_params": n_params, **latency(fitted.model, folds[-1][1].x)})
    return value


def run_sweep(
    train: Dataset,
    val: Dataset | None,
    config: Config,
    paths: Paths,
    *,
    data_hash: str,
    tags: dict[str, str],
    source: str | Path = "memory",
) -> SweepResult:
    """Run (or resume) the study until it holds `tune.n_trials` finished trials; log it all to MLflow.

    MLflow must already point at the project's store (`store.configure_mlflow`).
    """
    import mlflow

    cfg = config.tune
    folds = make_folds(train, val, cfg.cv_folds, cfg.seed)
    name = study_name(config, data_hash)
    study = open_study(config, paths, name)
    # On PostgreSQL Optuna's heartbeats find dead workers before each trial; on a journal file we do.
    beats = not is_rdb(storage_url(config, paths))
    released = release_dead_trials(study, cfg.grace_period) if beats else []
    parent_id = _parent_run(study, name, tags | {"study": name})
    device = resolve_device(config.train.device)
    inputs = (train, val, data_hash, source)
    objective = _objective(config, folds, parent_id, tags | {"study": name}, device, inputs, beats)

    def release(study: optuna.Study, _: FrozenTrial) -> None:  # after each trial: retry what dead workers left
        if beats:
            released.extend(release_dead_trials(study, cfg.grace_period))

    start = time.perf_counter()
    with mlflow.start_run(run_id=parent_id):
        if not mlflow.get_run(parent_id).data.params:
            _log_sweep_settings(config, name, folds)
            log_inputs(*inputs)
        mlflow.set_tags({"n_trials": str(cfg.n_trials), "storage": store.redact(storage_url(config, paths))})
        failures = 0
        while (done := count_finished(study)) < cfg.n_trials:
            log.info(
                "study %s: %d of %d trials finished; running %d more", name, done, cfg.n_trials, cfg.n_trials - done
            )
            before = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
            study.optimize(
                objective,
                n_trials=cfg.n_trials - done,
                catch=(Exception,),
                callbacks=[release, optuna.study.MaxTrialsCallback(cfg.n_trials, states=FINISHED)],
                gc_after_trial=True,
            )
            failures += len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))) - before
            if failures >= cfg.n_trials:
                raise PipelineError(f"{failures} trials failed (see their MLflow runs, tag state=failed); giving up")
        result = _summarise(study, parent_id)
        mlflow.log_metrics(
            {"best_val_accuracy": result.value, "sweep_seconds": time.perf_counter() - start, **result.counts}
        )
        mlflow.set_tags({f"best.{k}": str(v) for k, v in {**result.spec, **result.hyper}.items()})
        mlflow.set_tag("best_trial", str(result.best_trial))
        mlflow.log_dict(best_params_document(result), "best_params.json")
        _log_plots(study)
    if released:
        log.info("released trials %s of dead workers", released)
    return result


def _log_sweep_settings(config: Config, name: str, folds: list[tuple[Dataset, Dataset]]) -> None:
    import mlflow

    t = config.tune
    mlflow.log_params(
        {
            "families": ",".join(t.families),
            "train_fraction": t.train_fraction,
            "val_fraction": t.val_fraction,
            "epochs": t.epochs,
            "cv_folds": t.cv_folds,
            "seed": t.seed,
            "pruner": t.pruner,
            "train_images": len(folds[0][0]),
            "val_images": len(folds[0][1]),
            "study": name,
        }
    )
    mlflow.log_dict(t.space.model_dump(mode="json"), "search_space.json")


def _summarise(study: optuna.Study, parent_id: str) -> SweepResult:
    counts = {
        state: len(study.get_trials(deepcopy=False, states=(s,)))
        for state, s in (("complete", TrialState.COMPLETE), ("pruned", TrialState.PRUNED), ("failed", TrialState.FAIL))
    }
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        value = float(best.value)
    else:  # every trial was pruned: take the best last reported value
        pruned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)) if t.intermediate_values]
        if not pruned:
            raise PipelineError("no trial completed or reported a validation accuracy; see the sweep's MLflow runs")
        best = max(pruned, key=lambda t: t.intermediate_values[max(t.intermediate_values)])
        value = float(best.intermediate_values[max(best.intermediate_values)])
        log.warning("every trial was pruned; using trial %d, the best at its last report (%.4f)", best.number, value)
    spec, hyper = params_to_choice(best.params)
    return SweepResult(study, spec, hyper, value, best.number, parent_id, counts)


def best_params_document(result: SweepResult) -> dict[str, Any]:
    """The content of `models/best_params.json`: what `train` builds and how it optimises it."""
    return {
        "spec": result.spec,
        "hyper": result.hyper,
        "val_accuracy": result.value,
        "trial": result.best_trial,
        "study": result.study.study_name,
        "parent_run_id": result.parent_run_id,
    }


def _log_plots(study: optuna.Study) -> None:
    """Optuna's optimisation history and parameter importances (matplotlib) as artifacts of the active run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    from optuna.visualization import matplotlib as ovm

    plots = {
        "optimization_history.png": ovm.plot_optimization_history,
        "param_importances.png": ovm.plot_param_importances,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for filename, plot in plots.items():
            try:
                with warnings.catch_warnings():  # "experimental"; "no artists" when no trial completed
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    warnings.simplefilter("ignore", UserWarning)
                    ax = plot(study, target_name="val accuracy")  # not "Objective Value"
            except (ValueError, RuntimeError) as err:  # e.g. importances need two complete trials
                log.info("skipped %s: %s", filename, err)
                continue
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            fig.savefig(Path(tmp) / filename, dpi=100)
            plt.close(fig)
            mlflow.log_artifact(str(Path(tmp) / filename), "optuna")
        df = study.trials_dataframe()
        df.to_csv(Path(tmp) / "trials.csv", index=False)
        mlflow.log_artifact(str(Path(tmp) / "trials.csv"), "optuna")


# ---- the sweep's data -----------------------------------------------------------------------------


def sweep_subsets(train: Dataset, val: Dataset | None, cfg: TuneConfig) -> tuple[Dataset, Dataset | None]:
    """The sweep's data: `train_fraction` of train's source images, `val_fraction` of val's (by source, seeded)."""
    if len(train) == 0:
        raise PipelineError("the sweep's training set is empty")
    train = subsample_sources(train, cfg.train_fraction, cfg.seed)
    if val is not None and cfg.cv_folds == 1:
        val = subsample_sources(val, cfg.val_fraction, cfg.seed)
    return train, (val if cfg.cv_folds == 1 else None)


def log_inputs(train: Dataset, val: Dataset | None, data_hash: str, source: str | Path) -> None:
    """Record the sweep's data as `mlflow.data` inputs of the active run; digests derive from the DVC hash."""
    for split, ds in (("train", train), ("val", val)):
        if ds is not None:
            digest = store.array_digest(f"{data_hash}:{split}:{len(ds)}".encode())
            context = "training" if split == "train" else "validation"
            store.log_dataset(ds, f"{split}-sweep", context, f"{source}/{split}", digest)
