"""The MLflow runs of `compare`: one parent run, every configuration a nested run, so the UI compares them.

Also reads back what the `train` stage's run recorded (its training time and images), for the pipeline's row.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rotmnist.tracking.store import role_tag

log = logging.getLogger(__name__)

# Row fields logged as tags rather than metrics: they are text.
TEXT_FIELDS = ("model", "training_data", "sla_reasons", "trained_by")


@contextlib.contextmanager
def parent_run(name: str, tags: dict[str, str], params: dict[str, Any]) -> Iterator[str]:
    """The comparison's top-level run of the configured experiment; yields its id, ends it after the block."""
    import mlflow

    with mlflow.start_run(run_name=name, tags=tags | role_tag("compare")) as run:
        mlflow.log_params(params)
        yield run.info.run_id


@contextlib.contextmanager
def configuration_run(parent_id: str, name: str, tags: dict[str, str], params: dict[str, Any]) -> Iterator[str]:
    """A run nested under the comparison for one configuration; yields its id."""
    import mlflow

    with mlflow.start_run(run_name=name, nested=True, parent_run_id=parent_id, tags=tags) as run:
        mlflow.log_params(params)
        yield run.info.run_id


def row_metrics(row: dict[str, Any]) -> dict[str, float]:
    """A configuration's figures as MLflow metrics: numbers and verdicts as 0/1, accuracy per angle flattened."""
    metrics = {f"accuracy_angle_{a}": v for a, v in row["angle_accuracy"].items()}
    for key, value in row.items():
        if key not in TEXT_FIELDS and key != "angle_accuracy":
            metrics[key] = float(value)
    return metrics


def log_row(row: dict[str, Any], spec: dict[str, Any]) -> None:
    """One configuration's model spec (params) and figures (metrics; the SLA verdict also as tags) on the active run."""
    import mlflow

    mlflow.log_params(spec)
    mlflow.log_metrics(row_metrics(row))
    mlflow.set_tags({"sla": "met" if row["sla_met"] else "failed", **{k: str(row[k]) for k in TEXT_FIELDS}})


def log_summary(run_ids: dict[str, str], rows: dict[str, dict[str, Any]], files: list[Path]) -> None:
    """After all configurations: each nested run's Pareto mark, and the table and plots on the parent run."""
    import mlflow

    client = mlflow.MlflowClient()
    for name, run_id in run_ids.items():
        client.log_metric(run_id, "pareto", float(rows[name]["pareto"]))
        client.set_tag(run_id, "pareto", str(rows[name]["pareto"]).lower())
    mlflow.log_dict(rows, "compare.json")
    mlflow.log_metrics({"configurations": len(rows), "sla_met": sum(r["sla_met"] for r in rows.values())})
    for f in files:
        mlflow.log_artifact(str(f), "plots")


def training_record(run_id: str) -> dict[str, Any] | None:
    """What the `train` stage's run `run_id` trained: images seen and seconds spent in epochs; None if unreadable."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        client.get_run(run_id)  # raises if the run is not in this store
        seconds = [m.value for m in client.get_metric_history(run_id, "epoch_seconds")]
        # An epoch may visit only some rows of the split (train.rotations_per_epoch): what each one did.
        images = round(sum(m.value for m in client.get_metric_history(run_id, "epoch_images")))
        if not seconds or not images:
            raise ValueError("the run has no epoch_seconds or epoch_images metrics")
    except (MlflowException, ValueError) as err:
        log.warning("cannot read the training record of run %s (%s)", run_id, err)
        return None
    return {"train_images": images, "train_seconds": float(sum(seconds)), "trained_by": f"train run {run_id}"}
