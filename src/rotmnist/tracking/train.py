"""The MLflow run of a final training: params, split inputs, per-epoch metrics, results and the exported model.

Used by the stages `train` and `finetune` (whose runs log a model the same way); kept apart from `tracking` (which
the sweep uses too), so a change to how the final model is logged does not invalidate the sweep in `dvc.yaml`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rotmnist.errors import PipelineError
from rotmnist.io import read_json, write_json
from rotmnist.spec import IMAGE_SHAPE, N_CLASSES
from rotmnist.tracking.store import array_digest, log_dataset

if TYPE_CHECKING:
    from torch import nn

    from rotmnist.data.dataset import Dataset
    from rotmnist.paths import Paths

# The input example given to `log_model`: `torch.export` specialises a batch dimension of 1 (and may tie
# one equal to 28 or 10 to the image or class dimension), so the example has a batch size of none of those.
EXAMPLE_BATCH = 5


@contextlib.contextmanager
def start_run(name: str, tags: dict[str, str], params: dict[str, Any]) -> Iterator[str]:
    """A new top-level run of the configured experiment with `tags` and `params`; yields its id, ends it after.

    MLflow's active run, not a client and a run id: `mlflow.pytorch.log_model` and `mlflow.log_input` take no
    run id, and a client's `create_run` leaves out the source and user tags that `mlflow.start_run` adds.
    The run is active only inside this block, and ended (FAILED on an error) when it exits.
    """
    import mlflow

    with mlflow.start_run(run_name=name, tags=tags) as run:
        mlflow.log_params(params)
        yield run.info.run_id


def current_uri() -> str:
    """The tracking URI MLflow uses now (after `configure_mlflow`)."""
    import mlflow

    return mlflow.get_tracking_uri()


def write_run_reference(path: Path, run_id: str, model_uri: str, **extra: Any) -> None:
    """A model reference (`models/run.json`, `models/candidate.json`): the run, the logged model, the tracking URI."""
    reference = {"run_id": run_id, "model_uri": model_uri, **extra, "tracking_uri": current_uri()}
    write_json(path, reference)


def read_run_reference(path: Path, made_by: str) -> dict[str, Any]:
    """A model reference written by stage `made_by`: at least the run id and the logged model's URI."""
    data = read_json(path, made_by=made_by)
    missing = [k for k in ("run_id", "model_uri") if not isinstance(data, dict) or not data.get(k)]
    if missing:
        raise PipelineError(f"{path} lacks {', '.join(missing)}; run `rotmnist {made_by}` again")
    return data


def log_split_inputs(splits: dict[str, Dataset], paths: Paths, data_hash: str) -> None:
    """Record the train/val/test splits as dataset inputs of the active run, digests derived from the DVC hash."""
    contexts = {"train": "training", "val": "validation", "test": "testing"}
    for split, ds in splits.items():
        digest = array_digest(data_hash.encode(), split.encode())
        log_dataset(ds, split, contexts[split], paths.split(split), digest)


def log_epoch(metrics: dict[str, float]) -> None:
    """One epoch's metrics on the active run, at step `epoch`: a `fit(on_epoch=...)` callback."""
    import mlflow

    mlflow.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=int(metrics["epoch"]))


def log_training_results(
    model: nn.Module,
    metrics: dict[str, float],
    plot_files: list[Path],
    best_params: dict[str, Any],
    input_example: np.ndarray,
) -> str:
    """The final model's metrics, plots, the sweep's choice and the model itself on the active run; the model URI."""
    import mlflow

    mlflow.log_metrics(metrics)
    for f in plot_files:
        mlflow.log_artifact(str(f), "plots")
    mlflow.log_dict(best_params, "best_params.json")
    return log_classifier(model, name="model", input_example=input_example)


def log_classifier(
    module: nn.Module, name: str = "model", input_example: np.ndarray | None = None, **kwargs: Any
) -> str:
    """Log a raw-image classifier ((N, 28, 28) float 0-255 -> (N, 10) probabilities) to the active run.

    Saved with `torch.export` (MLflow's default "pt2" format, no pickle), a tensor signature whose batch
    dimension is free, and an input example; returns the logged model's URI. Extra kwargs go to log_model.
    """
    import mlflow
    import torch
    from mlflow.models import infer_signature

    module = module.cpu().eval()
    if input_example is None:
        input_example = np.zeros((EXAMPLE_BATCH, *IMAGE_SHAPE), np.float32)
        input_example[:, 6:22, 12:16] = 255.0  # a crude "1"
    input_example = np.ascontiguousarray(input_example, dtype=np.float32)
    tied = (0, 1, N_CLASSES, *IMAGE_SHAPE)  # batch sizes `torch.export` would specialise or tie
    if input_example.ndim != 3 or input_example.shape[1:] != IMAGE_SHAPE or len(input_example) in tied:
        raise ValueError(
            f"input_example must have shape (N, {IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]}) with N not in "
            f"{', '.join(map(str, sorted(set(tied))))}; got {input_example.shape}"
        )
    with torch.no_grad():
        output = module(torch.from_numpy(input_example)).numpy()
    signature = infer_signature(input_example, output)
    requirements = [
        f"torch=={torch.__version__.split('+')[0]}",
        f"numpy=={np.__version__}",
        f"mlflow=={mlflow.__version__}",
    ]
    info = mlflow.pytorch.log_model(
        pytorch_model=module,
        name=name,
        signature=signature,
        input_example=input_example,
        serialization_format="pt2",
        pip_requirements=requirements,
        **kwargs,
    )
    return info.model_uri
