"""The one loader of `params.yaml`: typed, validated, with errors that name the key.

One pydantic model per section, grouped by the stages that read them (`data`, `training`, `evaluation`,
`serving`); `Config` holds them all, and `load_config` is the one entry point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from rotmnist.config.base import Section
from rotmnist.config.data import AugmentConfig, DownloadConfig, SplitConfig, UrlSource, WheelSource
from rotmnist.config.evaluation import (
    CompareConfig,
    CompareSpecs,
    CurriculumConfig,
    LatencyConfig,
    MonitorConfig,
    SlaConfig,
)
from rotmnist.config.serving import MIN_RECENT_INPUTS, DriftConfig, FeedbackConfig, PredictConfig, ServeConfig
from rotmnist.config.training import (
    CnnSpace,
    FinetuneConfig,
    MlpSpace,
    ModelConfig,
    SearchSpace,
    TrainConfig,
    TuneConfig,
)
from rotmnist.errors import ConfigError
from rotmnist.paths import Paths

__all__ = [
    "MIN_RECENT_INPUTS",
    "AugmentConfig",
    "CnnSpace",
    "CompareConfig",
    "CompareSpecs",
    "Config",
    "ConfigError",
    "CurriculumConfig",
    "DownloadConfig",
    "DriftConfig",
    "FeedbackConfig",
    "FinetuneConfig",
    "LatencyConfig",
    "MlflowConfig",
    "MlpSpace",
    "ModelConfig",
    "MonitorConfig",
    "PredictConfig",
    "SearchSpace",
    "ServeConfig",
    "SlaConfig",
    "SplitConfig",
    "TrainConfig",
    "TuneConfig",
    "UrlSource",
    "WheelSource",
    "config_from_dict",
    "load_config",
]


class MlflowConfig(Section):
    experiment: str = Field("rotmnist", min_length=1)
    tracking_uri: str = ""


class Config(Section):
    download: DownloadConfig = DownloadConfig()
    augment: AugmentConfig = AugmentConfig()
    split: SplitConfig = SplitConfig()
    tune: TuneConfig = TuneConfig()
    train: TrainConfig = TrainConfig()
    model: ModelConfig = ModelConfig()
    finetune: FinetuneConfig = FinetuneConfig()
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
