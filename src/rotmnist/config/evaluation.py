"""The sections that judge models: `monitor`, `compare` (with `latency` and its SLA) and `curriculum`."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from rotmnist.config.base import Configuration, Section
from rotmnist.spec import CIRCLE, CONFIGURATIONS, DATA_ANGLES, check_angles, distinct_values, normalize_spec


class MonitorConfig(Section):
    model_name: str = Field("rotmnist-cnn", min_length=1)
    threshold: float = Field(0.01, ge=0.0, le=1.0)
    angle_threshold: float = Field(0.015, ge=0.0, le=1.0)
    tolerance: float = Field(0.002, ge=0.0, le=1.0)
    feedback_threshold: float | None = Field(None, ge=0.0, le=1.0)  # max error on the feedback slice; null = off
    circle: list[int] = Field(list(CIRCLE), min_length=1)  # angles test and holdout digits are turned by
    far_threshold: float | None = Field(None, ge=0.0, le=1.0)  # max holdout error beyond the trained angles; null = off

    _circle = field_validator("circle")(staticmethod(check_angles))


class CompareSpecs(Section):
    """The fixed model of each family that `compare` trains (spec keys as in `spec.SPEC_KEYS`, family implied)."""

    logreg: dict[str, Any] = Field({}, validate_default=True)
    mlp: dict[str, Any] = Field({"layers": 2, "width": 512, "dropout": 0.1}, validate_default=True)
    cnn: dict[str, Any] = Field(
        {"blocks": 3, "channels": 16, "kernel": 3, "dense": 128, "dropout": 0.25}, validate_default=True
    )

    @field_validator("logreg", "mlp", "cnn")
    @classmethod
    def _spec(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "family" in v:
            raise ValueError("the family is the key above; remove 'family'")
        return normalize_spec({"family": info.field_name, **v})


class LatencyConfig(Section):
    """How every model's predictions are timed (`train`, each sweep trial, `compare`): the same way, after a warm-up."""

    num_threads: int = Field(1, ge=1)  # torch CPU threads while timing: one core per serving worker
    warmup: int = Field(50, ge=1)  # untimed single-image calls first
    single_calls: int = Field(1000, ge=10)  # timed one-image calls: p50 and p99
    batch_size: int = Field(256, ge=1)  # images per call for the throughput figure
    batch_calls: int = Field(20, ge=1)  # timed batch calls: median throughput


class SlaConfig(Section):
    """What a configuration must deliver to be served: accuracy at every angle and single-image tail latency."""

    min_worst_angle_accuracy: float = Field(0.99, ge=0.0, le=1.0)
    max_p99_latency_ms: float = Field(5.0, gt=0.0)


class CompareConfig(Section):
    configurations: tuple[Configuration, ...] = CONFIGURATIONS
    train_images: int = Field(300_000, ge=1)  # images each trained configuration sees (one pass; same for all)
    lr: float = Field(3e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    batch_size: int = Field(256, ge=1)
    seed: int = Field(0, ge=0)
    specs: CompareSpecs = CompareSpecs()
    sla: SlaConfig = SlaConfig()

    @field_validator("configurations", mode="before")
    @classmethod
    def _configurations(cls, v: Any) -> Any:  # the values themselves are checked by their Literal type
        message = "configurations must name at least one of {allowed}"
        return distinct_values(v, "configurations", CONFIGURATIONS, message, check_values=False)


class CurriculumConfig(Section):
    """The drift story (stage `curriculum`): arrival order, data per round, the monitor, the retraining policy."""

    arrivals: tuple[int, ...] = DATA_ANGLES  # the first angle is the deployed model's own
    initial_sources: int = Field(6000, ge=1)  # training digits of round 0, at the first angle
    increment: int = Field(6000, ge=1)  # per retraining, the next training digits added at each arrived angle
    max_rounds: int = Field(6, ge=1)  # retrainings per phase before it is reported unsatisfied
    threshold: float = Field(0.01, ge=0.0, le=1.0)  # the monitor's error threshold on the mix
    angle_threshold: float = Field(0.015, ge=0.0, le=1.0)  # and on each arrived angle's part of the mix
    monitor_sources: int = Field(2000, ge=1)  # holdout digits in the monitor's sample, each at every arrived angle
    warm_start: bool = True  # retrain from the deployed model (false: from scratch)
    replay: bool = True  # keep earlier data in the pool (false: train on the newest increment only)
    round_images: int = Field(60_000, ge=0)  # most images one (re)training sees, the newest increment first; 0 = all
    epochs: int = Field(1, ge=1)  # per (re)training
    lr: float = Field(3e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    batch_size: int = Field(256, ge=1)
    model: dict[str, Any] = Field(
        {"family": "cnn", "blocks": 3, "channels": 16, "kernel": 5, "dense": 256, "dropout": 0.2}
    )
    seed: int = Field(0, ge=0)

    @field_validator("arrivals", mode="before")
    @classmethod
    def _arrivals(cls, v: Any) -> Any:
        message = "arrivals must be a non-empty list of angles from {allowed}, got {got}"
        return distinct_values(v, "arrivals", DATA_ANGLES, message)

    @field_validator("model")
    @classmethod
    def _model(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            return normalize_spec(v)
        except (TypeError, ValueError) as err:
            raise ValueError(str(err)) from None
