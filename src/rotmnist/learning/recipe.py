"""The training recipe of a run: optimiser settings (`Hyper`), the `train` keys every run shares, the sweep's choice.

The sweep's trials, the final model, `learn_model`, `compare` and `curriculum` all build their `Hyper` here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rotmnist.errors import PipelineError
from rotmnist.io import read_json
from rotmnist.learning.device import resolve_precision
from rotmnist.spec import PRECISIONS, SCHEDULES, normalize_spec

if TYPE_CHECKING:
    from rotmnist.config import Config


@dataclass(frozen=True)
class Hyper:
    """Optimisation settings of one training run (a trial's or the final model's)."""

    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    epochs: int = 1
    label_smoothing: float = 0.0
    shift: int = 0  # random translation of each training image by up to this many pixels
    schedule: str = "onecycle"
    precision: str = "fp32"  # of the training step's matmuls and convolutions; see resolve_precision
    rotations_per_epoch: int = 0  # rows of each source image an epoch trains on, drawn afresh per epoch; 0 = all
    ema: float = 0.0  # decay of the weights' exponential moving average that fit returns; 0 = the last weights
    feedback_weight: float = 1.0  # the loss weight of a person's correction (rows with mnist_split FEEDBACK)

    def __post_init__(self) -> None:
        checks = {
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "batch_size": isinstance(self.batch_size, int) and self.batch_size >= 1,
            "epochs": isinstance(self.epochs, int) and self.epochs >= 1,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "shift": isinstance(self.shift, int) and 0 <= self.shift <= 8,
            "schedule": self.schedule in SCHEDULES,
            "precision": self.precision in PRECISIONS,
            "rotations_per_epoch": isinstance(self.rotations_per_epoch, int) and self.rotations_per_epoch >= 0,
            "ema": 0 <= self.ema < 1,
            "feedback_weight": self.feedback_weight > 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"invalid training settings {bad}: {self}; "
                f"schedule must be one of {list(SCHEDULES)}, precision one of {list(PRECISIONS)}"
            )


# The `train` keys every trial and the final model share (dvc.yaml lists them as the tune stage's params).
RECIPE_KEYS = ("shift", "label_smoothing", "schedule", "precision")
# The pipeline's own model (sweep trials, the final model, its fine-tune, learn_model) also draws its epochs and
# averages its weights the `train` way; `compare` and `curriculum` plan their own passes over their data and keep
# RECIPE_KEYS. How much a correction weighs is the fine-tune's own setting (`finetune.feedback_weight`).
PIPELINE_RECIPE_KEYS = (*RECIPE_KEYS, "rotations_per_epoch", "ema")
HYPER_KEYS = ("lr", "weight_decay", "batch_size")  # what the sweep tunes


def recipe(config: Config, hyper: dict[str, Any], epochs: int, keys: tuple[str, ...] = RECIPE_KEYS) -> Hyper:
    """The training settings of a run: the tuned optimiser params + the recipe `keys` of `train`."""
    return Hyper(**hyper, epochs=epochs, **config.train.model_dump(include=set(keys)))


def read_best_params(path: str | Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """`models/best_params.json` from `tune`: (model spec, optimiser settings, the whole document)."""
    doc = read_json(path, made_by="tune")
    if not isinstance(doc, dict) or not isinstance(doc.get("spec"), dict) or not isinstance(doc.get("hyper"), dict):
        raise PipelineError(f"{path} must hold objects 'spec' and 'hyper' (written by `rotmnist tune`)")
    try:
        spec = normalize_spec(doc["spec"])
        hyper = {k: doc["hyper"][k] for k in HYPER_KEYS}
        Hyper(**hyper)
    except (KeyError, TypeError, ValueError) as err:
        raise PipelineError(f"{path}: invalid best params: {err}") from None
    return spec, hyper, doc


def hyper_dict(hp: Hyper, device: torch.device) -> dict[str, Any]:
    """`hp` as a plain dict for MLflow params, with the precision that runs on `device` (not "auto")."""
    return asdict(hp) | {"precision": resolve_precision(hp.precision, device)}
