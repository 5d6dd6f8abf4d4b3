"""The MLflow runs of the drift story: one curriculum run, and under it one nested run per round.

Used by the stage `curriculum` only; the simulation itself (`learning.curriculum`) knows nothing of MLflow and
reports each round through a callback, which `round_logger` turns into a nested run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rotmnist.learning.curriculum import Round, round_metrics
from rotmnist.tracking.store import role_tag


@contextlib.contextmanager
def start_curriculum_run(name: str, tags: dict[str, str], params: dict[str, Any]) -> Iterator[str]:
    """The top-level curriculum run with `tags` and `params`; yields its id and ends it after the block."""
    import mlflow

    with mlflow.start_run(run_name=name, tags=tags | role_tag("curriculum")) as run:
        mlflow.log_params(params)
        yield run.info.run_id


def round_logger(parent_id: str, tags: dict[str, str]) -> Callable[[Round], None]:
    """A `simulate(on_round=...)` callback: each round becomes a run nested under `parent_id`."""
    import mlflow

    def log_round(r: Round) -> None:
        name = f"r{r.step:02d}-phase{r.phase}-{r.angle:+d}deg-round{r.round}"
        params = {
            "step": r.step,
            "phase": r.phase,
            "angle": r.angle,
            "round": r.round,
            "arrived": " ".join(str(a) for a in r.arrived),
            "trained": r.trained,
        }
        run_tags = tags | role_tag("round") | {"concept_drift": str(r.concept_drift).lower()}
        with mlflow.start_run(run_name=name, nested=True, parent_run_id=parent_id, tags=run_tags):
            mlflow.log_params(params)
            mlflow.log_metrics(round_metrics(r))
        mlflow.log_metrics({"monitor_error": r.monitor_error, "train_images": float(r.train_images)}, step=r.step)

    return log_round


def log_summary(metrics: dict[str, float], files: list[Path]) -> None:
    """The curriculum's summary metrics, its report and plots on the active (parent) run."""
    import mlflow

    mlflow.log_metrics(metrics)
    for f in files:
        mlflow.log_artifact(str(f), "curriculum")
