"""The Optuna sweep (seeded TPE, pruned on per-epoch validation accuracy), one MLflow run per trial.

One parent MLflow run per study; every trial is a nested child run with its params, per-epoch metrics,
latency and state (complete / pruned / failed). The study lives in a journal file by default (or a
PostgreSQL / journal URL for parallel workers) and resumes: a sweep killed mid-way and started again
ends with exactly `tune.n_trials` finished (complete + pruned) trials. Its name carries a hash of what
defines the objective (data, search space, budget), so raising `n_trials` extends the same study while
any other change starts a fresh one. `run_sweep` is shared by the stage `tune` and by `learn_model`.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from rotmnist.data.dataset import Dataset
from rotmnist.errors import PipelineError
from rotmnist.learning.device import resolve_device
from rotmnist.learning.latency import measure_latency
from rotmnist.learning.recipe import PIPELINE_RECIPE_KEYS, Hyper, hyper_dict, recipe
from rotmnist.learning.training import fit
from rotmnist.storage.urls import is_postgres, redact
from rotmnist.tracking import store
from rotmnist.tracking.tune_space import params_to_choice, run_name, suggest
from rotmnist.tracking.tune_storage import (
    FINISHED,
    STATE_TAG,
    count_finished,
    heartbeat,
    open_study,
    release_dead_trials,
    storage_url,
    study_lock,
    study_name,
)

if TYPE_CHECKING:
    import torch

    from rotmnist.config import Config, TuneConfig
    from rotmnist.paths import Paths

log = logging.getLogger(__name__)

PARENT_ATTR = "mlflow_parent_run_id"
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


def _parent_run(study: optuna.Study, name: str, tags: dict[str, str]) -> str:
    """The sweep's parent MLflow run: the study's own when it still exists, else a new one it records.

    Called under the study's lock (`run_sweep`), so workers started together agree on one parent.
    """
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
    with mlflow.start_run(run_name=f"sweep-{name}", tags=tags | store.role_tag("sweep")) as run:
        pass
    study.set_user_attr(PARENT_ATTR, run.info.run_id)
    return run.info.run_id


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
                value = _train_folds(trial, folds, spec, hp, config, device, name)
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


def _train_folds(trial, folds, spec, hp: Hyper, config: Config, device, name: str) -> float:
    import mlflow

    cfg = config.tune

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
    timing = measure_latency(fitted.model, folds[-1][1].x, config.latency)
    mlflow.log_metrics({"objective_val_accuracy": value, "n_params": n_params, **timing})
    return value


def run_sweep(
    folds: list[tuple[Dataset, Dataset]],
    config: Config,
    paths: Paths,
    *,
    data_hash: str,
    tags: dict[str, str],
    source: str | Path = "memory",
) -> SweepResult:
    """Run (or resume) the study on `folds` until it holds `tune.n_trials` finished trials; log it all to MLflow.

    `folds` are (train, validation) pairs (`data.sources.make_folds`): a trial's score is its mean accuracy over
    them. MLflow must already point at the project's store (`store.configure_mlflow`).
    """
    import mlflow

    cfg = config.tune
    name, url = study_name(config, data_hash), storage_url(config, paths)
    with study_lock(url, paths, name):  # workers started together: one creates the study and its parent run
        study = open_study(config, paths, name)
        parent_id = _parent_run(study, name, tags | {"study": name})
    # On PostgreSQL Optuna's heartbeats find dead workers before each trial; on a journal file we do.
    beats = not is_postgres(url)
    released = release_dead_trials(study, cfg.grace_period) if beats else []
    device = resolve_device(config.train.device)
    inputs = (folds, data_hash, source)
    objective = _objective(config, folds, parent_id, tags | {"study": name}, device, inputs, beats)

    def release(study: optuna.Study, _: FrozenTrial) -> None:  # after each trial: retry what dead workers left
        if beats:
            released.extend(release_dead_trials(study, cfg.grace_period))

    start = time.perf_counter()
    with mlflow.start_run(run_id=parent_id):
        if not mlflow.get_run(parent_id).data.params:
            _log_sweep_settings(config, name, folds)
            log_inputs(*inputs)
        mlflow.set_tags({"n_trials": str(cfg.n_trials), "storage": redact(url)})
        _optimize(study, objective, cfg, release)
        result = _summarise(study, parent_id)
        _log_result(result, time.perf_counter() - start)
    if released:
        log.info("released trials %s of dead workers", released)
    return result


def _optimize(study: optuna.Study, objective: Any, cfg: TuneConfig, release: Any) -> None:
    """Run trials until the study holds `cfg.n_trials` finished ones; a PipelineError once as many have failed."""
    failures = 0
    while (done := count_finished(study)) < cfg.n_trials:
        log.info(
            "study %s: %d of %d trials finished; running %d more",
            study.study_name,
            done,
            cfg.n_trials,
            cfg.n_trials - done,
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


def _log_result(result: SweepResult, seconds: float) -> None:
    """The best trial's choice, the counts and Optuna's plots, on the active (parent) run."""
    import mlflow

    mlflow.log_metrics({"best_val_accuracy": result.value, "sweep_seconds": seconds, **result.counts})
    mlflow.set_tags({f"best.{k}": str(v) for k, v in {**result.spec, **result.hyper}.items()})
    mlflow.set_tag("best_trial", str(result.best_trial))
    mlflow.log_dict(best_params_document(result), "best_params.json")
    _log_plots(result.study)


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


def log_inputs(folds: list[tuple[Dataset, Dataset]], data_hash: str, source: str | Path) -> None:
    """Record the sweep's data as `mlflow.data` inputs of the active run; digests derive from the DVC hash.

    One fold: its train and validation sets. k folds: their union, as `train` (each fold validates on a part).
    """
    train, val = folds[0] if len(folds) == 1 else (Dataset.concat(list(folds[0])), None)
    for split, ds in (("train", train), ("val", val)):
        if ds is not None:
            digest = store.array_digest(f"{data_hash}:{split}:{len(ds)}".encode())
            context = "training" if split == "train" else "validation"
            store.log_dataset(ds, f"{split}-sweep", context, f"{source}/{split}", digest)
