"""The sections of the sweep and the final training: `tune` (with its search space) and `train`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from rotmnist.config.base import Device, Family, Floats2, Ints, Precision, Schedule, Section, as_tuple
from rotmnist.spec import (
    CNN_CHOICES,
    FAMILIES,
    MLP_CHOICES,
    check_angles,
    check_choices,
    check_optuna_storage,
    distinct_values,
    log_range,
)


class CnnSpace(Section):
    """The CNN architecture choices the sweep samples from."""

    blocks: Ints = (3,)
    channels: Ints = (16,)  # of the first block, doubled per block
    kernel: Ints = (5,)
    convs_per_block: Ints = (1,)
    batch_norm: Annotated[tuple[bool, ...], BeforeValidator(as_tuple)] = (True,)
    dense: Ints = (64, 128, 256)

    @field_validator("blocks", "channels", "kernel", "convs_per_block", "batch_norm", "dense")
    @classmethod
    def _allowed(cls, v: tuple[Any, ...], info: ValidationInfo) -> tuple[Any, ...]:
        return check_choices(v, CNN_CHOICES[info.field_name])


class MlpSpace(Section):
    """The MLP architecture choices the sweep samples from."""

    layers: Ints = (1, 2, 3)
    width: Ints = (256, 512, 1024)

    @field_validator("layers", "width")
    @classmethod
    def _allowed(cls, v: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        return check_choices(v, MLP_CHOICES[info.field_name])


class SearchSpace(Section):
    """What the sweep samples: [low, high] ranges (lr and weight decay log-uniform) and lists of choices."""

    lr: Floats2 = (2e-3, 1e-2)
    weight_decay: Floats2 = (1e-5, 1e-2)
    batch_size: Ints = (128, 256)
    dropout: Floats2 = (0.1, 0.3)  # cnn and mlp
    cnn: CnnSpace = CnnSpace()
    mlp: MlpSpace = MlpSpace()

    @field_validator("lr", "weight_decay")
    @classmethod
    def _log_uniform(cls, v: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        return log_range(v, info.field_name)

    @field_validator("dropout")
    @classmethod
    def _dropout(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] <= v[1] < 1:
            raise ValueError(f"dropout must be [low, high] with 0 <= low <= high < 1, got {list(v)}")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        return check_choices(v)


class TuneConfig(Section):
    n_trials: int = Field(8, ge=1)
    families: tuple[Family, ...] = ("cnn",)
    train_fraction: float = Field(0.25, gt=0.0, le=1.0)
    val_fraction: float = Field(0.25, gt=0.0, le=1.0)
    epochs: int = Field(4, ge=1)
    cv_folds: int = Field(1, ge=1, le=10)
    seed: int = Field(0, ge=0)
    pruner: Literal["median", "threshold", "none"] = "median"
    pruner_startup_trials: int = Field(2, ge=0)
    prune_below: float = Field(0.0, ge=0.0, le=1.01)
    study_name: str = Field("rotmnist", min_length=1)
    storage: str = ""
    # A worker beats every `heartbeat_interval` s while it runs a trial; a trial silent for `grace_period` s
    # is taken as dead, failed and retried once by another worker (PostgreSQL, and journal files across hosts).
    heartbeat_interval: int = Field(30, ge=1)
    grace_period: int = Field(120, ge=1)
    space: SearchSpace = SearchSpace()

    @field_validator("families", mode="before")
    @classmethod
    def _families(cls, v: Any) -> Any:  # the values themselves are checked by their Literal type
        message = "families must name at least one of {allowed}"
        return distinct_values(v, "families", FAMILIES, message, check_values=False)

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        return check_optuna_storage(v)

    @model_validator(mode="after")
    def _grace_outlasts_beats(self) -> TuneConfig:
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError("tune.grace_period must be longer than tune.heartbeat_interval")
        return self


class TrainConfig(Section):
    epochs: int = Field(50, ge=1)
    seed: int = Field(0, ge=0)
    device: Device = "auto"
    num_threads: int = Field(0, ge=0)
    shift: int = Field(2, ge=0, le=8)  # random translation in pixels (training only; tune trials too)
    label_smoothing: float = Field(0.05, ge=0.0, lt=1.0)
    schedule: Schedule = "onecycle"
    precision: Precision = "auto"  # bf16 autocast of the training step where native
    rotations_per_epoch: int = Field(1, ge=0)  # rows of each source image per epoch, drawn afresh; 0 = all
    ema: float = Field(0.999, ge=0.0, lt=1.0)  # decay of the weight average the model is; 0 = the last weights
    val_every: int = Field(5, ge=1)  # epochs between scorings of the val split (and after the last)

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        moved = sorted(k for k in MOVED_TO_FINETUNE if isinstance(data, dict) and k in data)
        if moved:
            keys = ", ".join(moved)
            raise ValueError(f"{keys} moved to the section finetune (the stage that trains on people's corrections)")
        return data


class ModelConfig(Section):
    """How the model `train` logs scores, wherever it is used (the registry, serve, predict, monitor): its
    orientation pooling. An unsure digit (top probability below `pool_below`) is scored turned by each of
    `orientations` as one batch and the probabilities are averaged; [0] turns none. Defaults: docs/results.md."""

    orientations: list[int] = Field([-90, -60, -30, -15, 0, 15, 30, 60, 90], min_length=1)
    pool_below: float = Field(0.5, gt=0.0, le=1.0)  # 1 = every digit

    @field_validator("orientations")
    @classmethod
    def _orientations(cls, v: list[int]) -> list[int]:
        return check_angles(v, holding=0)  # 0: the digit as drawn


# The keys of `train` that the stage `finetune` took over (a params.yaml that still sets one gets a clear error).
MOVED_TO_FINETUNE = ("feedback", "feedback_cap", "feedback_weight")


class FinetuneConfig(Section):
    """Stage `finetune`: the trained model, warm-started, fine-tuned on people's corrections with replay."""

    feedback: bool = False  # fine-tune on data/feedback/train; false: the candidate is train's model as it is
    feedback_cap: int = Field(0, ge=0)  # the newest corrections trained on; 0 = all
    feedback_weight: float = Field(0.5, gt=0.0, le=100.0)  # a correction's weight in the loss (a train digit: 1)
    epochs: int = Field(2, ge=1)  # passes over the replayed train split and the corrections
    replay_rotations: int = Field(1, ge=0)  # of each train source digit per epoch, drawn afresh; 0 = all 7
    lr: float = Field(3e-3, gt=0.0, le=1.0)  # AdamW, cosine decay from this to 0 (the tuned run peaked near 5e-3)
    blend: float = Field(0.5, gt=0.0, le=1.0)  # the candidate's weights: this share the fine-tuned, the rest train's
    seed: int = Field(0, ge=0)
