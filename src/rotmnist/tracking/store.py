"""MLflow plumbing every stage shares: the store and experiment, run tags, data digests, dataset inputs.

Nothing happens at import: `configure_mlflow` is called by each stage's `main`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rotmnist.errors import PipelineError, first_line, retry
from rotmnist.storage.locks import store_lock
from rotmnist.storage.urls import redact

if TYPE_CHECKING:
    from rotmnist.config import Config
    from rotmnist.data.dataset import Dataset
    from rotmnist.paths import Paths

log = logging.getLogger(__name__)

# Tracking servers choose their own artifact store; with any other store (SQLite, PostgreSQL, MySQL,
# files) MLflow would put artifacts under the working directory, a temporary one in `dvc exp run --queue`.
_SERVER_SCHEMES = ("http", "https", "databricks", "databricks-uc")
DATASET_RETRIES = 3

# What a run is, where the run name alone does not say it: one tag, one set of values (docs/tracking.md).
ROLE_TAG = "role"
ROLES = {
    "sweep": "a study's parent run; its trials are nested under it",
    "compare": "the comparison's parent run; one nested run per configuration",
    "curriculum": "the drift story's parent run",
    "round": "one round of the drift story, nested under its curriculum run",
    "input_drift": "one input-drift check of `rotmnist drift` on the request log",
}


def role_tag(role: str) -> dict[str, str]:
    """The tag saying what a run is; ValueError for a role outside `ROLES`."""
    if role not in ROLES:
        raise ValueError(f"unknown run role {role!r}; expected one of {sorted(ROLES)}")
    return {ROLE_TAG: role}


def tracking_uri(config: Config, paths: Paths) -> str:
    """MLFLOW_TRACKING_URI if set, else `mlflow.tracking_uri` from params, else the SQLite file at the repo root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or config.mlflow.tracking_uri or f"sqlite:///{paths.mlflow_db}"


def _is_server(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0] in _SERVER_SCHEMES


def configure_mlflow(config: Config, paths: Paths) -> str:
    """Point MLflow at the project's store and experiment (created if missing); return the experiment id.

    With a database or file store the experiment's artifacts go to `paths.mlflow_artifacts` (at the real
    repository root, also from a `dvc exp run --queue` copy); a tracking server decides for itself.
    Processes that start together on an empty database take turns to create MLflow's tables and the
    experiment (`storage.locks.store_lock`). A store that cannot be reached or an experiment that was deleted is
    a PipelineError saying what to do.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    uri = tracking_uri(config, paths)
    try:
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(uri)
        with store_lock(uri, "mlflow tables"):
            experiment_id = _experiment_id(config.mlflow.experiment, uri, paths)
    except (MlflowException, SQLAlchemyError, OSError) as err:
        first = first_line(err)
        raise PipelineError(
            f"cannot use the MLflow store {redact(uri)} ({type(err).__name__}: {first}); check mlflow.tracking_uri "
            "or MLFLOW_TRACKING_URI, that the tracking server or database is running, and for a server with "
            "logins MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        ) from err
    mlflow.set_experiment(experiment_id=experiment_id)
    log.info("MLflow: experiment %r (%s) in %s", config.mlflow.experiment, experiment_id, redact(uri))
    return experiment_id


def _experiment_id(name: str, uri: str, paths: Paths) -> str:
    """The id of experiment `name`, created (artifacts in the repository unless a server decides) if missing."""
    import mlflow
    from mlflow.exceptions import MlflowException

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise PipelineError(
            f"MLflow experiment {name!r} is deleted in {redact(uri)}; restore it (mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id}) or choose another mlflow.experiment"
        )
    if experiment is not None:
        return experiment.experiment_id
    location = None if _is_server(uri) else paths.mlflow_artifacts.resolve().as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException:  # through a tracking server (no lock), another worker created it in between
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def git_commit(paths: Paths) -> str:
    """The commit checked out in the workspace, or "unknown" outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=paths.root, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _relative(paths: Paths, out: str | Path) -> str:
    p = Path(out)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(paths.root.resolve())
        except ValueError:
            return p.as_posix()
    return p.as_posix().rstrip("/")


def folder_md5(folder: str | Path) -> str:
    """DVC's hash of a folder (`<md5 of its sorted file listing>.dir`), or a file's md5: computed from disk.

    DVC's own hashing (`dvc_data`, installed with dvc) computes it, in a dry run that stores nothing, so the
    digest is the one `dvc add` or `dvc repro` records.
    """
    from dvc_data.hashfile.build import build  # imported on use: only a run without dvc.lock hashes from disk
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem
    from dvc_objects.fs.memory import MemoryFileSystem

    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"cannot hash {folder}: it does not exist")
    staging = HashFileDB(MemoryFileSystem(), "/staging")
    _, _, obj = build(staging, str(folder.resolve()), LocalFileSystem(), "md5", dry_run=True)
    return obj.hash_info.value


def _lock_md5(paths: Paths, rel: str) -> str | None:
    import yaml

    lock = paths.root / "dvc.lock"
    try:
        data = yaml.safe_load(lock.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    for stage in (data.get("stages") or {}).values():
        for out in (stage or {}).get("outs") or []:
            if isinstance(out, dict) and str(out.get("path", "")).rstrip("/") == rel and out.get("md5"):
                return str(out["md5"])
    return None


def data_digest(paths: Paths, *outs: str | Path) -> str:
    """The DVC hash of a data output (e.g. "data/splits"): from dvc.lock, else computed the same way from disk.

    Of several outputs, an md5 of their hashes in order: one hash that changes when any of them does.
    """
    if not outs:
        raise ValueError("data_digest needs at least one output")
    digests = [_lock_md5(paths, rel) or folder_md5(paths.root / rel) for rel in (_relative(paths, o) for o in outs)]
    return digests[0] if len(digests) == 1 else hashlib.md5("+".join(digests).encode()).hexdigest()


def standard_tags(paths: Paths, *data_outs: str | Path) -> dict[str, str]:
    """Tags every run carries: the git commit, the DVC hash of the data it read, and the DVC experiment if any."""
    tags = {
        "git_commit": git_commit(paths),
        "data_path": "+".join(_relative(paths, o) for o in data_outs),
        "data_hash": data_digest(paths, *data_outs),
    }
    if os.environ.get("DVC_EXP_NAME"):  # set by `dvc exp run`
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


def log_dataset(ds: Dataset, name: str, context: str, source: str | Path, digest: str) -> None:
    """Record a split as an `mlflow.data` input of the active run (with its DVC digest, no re-hashing)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with warnings.catch_warnings():  # a local path matches two equivalent source types; MLflow warns and picks one
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_numpy(ds.x, targets=ds.y, source=str(source), name=name, digest=digest[:36])
    # Parallel sweep workers log the same dataset at once; the store's insert of a dataset that another
    # process has just added fails on its unique key. The retry finds the row and only links it.
    retry(lambda: mlflow.log_input(dataset, context=context), MlflowException, DATASET_RETRIES, 0.2)


def array_digest(*parts: np.ndarray | bytes) -> str:
    """A short md5 of arrays (or bytes), for data held only in memory (e.g. `learn_model`'s argument)."""
    h = hashlib.md5()
    for part in parts:
        h.update(part if isinstance(part, bytes) else np.ascontiguousarray(part).tobytes())
    return h.hexdigest()
