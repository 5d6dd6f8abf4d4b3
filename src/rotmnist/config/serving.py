"""The sections of the served model and what it logs: `predict`, `serve`, `feedback`, `drift`."""

from __future__ import annotations

from pydantic import Field

from rotmnist.config.base import Section


class PredictConfig(Section):
    max_file_mb: float = Field(64.0, gt=0.0)  # `rotmnist predict` refuses larger input files


class ServeConfig(Section):
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


class FeedbackConfig(Section):
    """`rotmnist feedback`: people's corrections from the request log into data/feedback."""

    holdout_fraction: float = Field(0.2, ge=0.0, lt=1.0)  # of the corrections, by request id: the feedback slice


MIN_RECENT_INPUTS = 50  # fewer logged images say nothing about a distribution


class DriftConfig(Section):
    """`rotmnist drift`: the last logged inputs against a sample of `train`, on features that need no label."""

    recent: int = Field(2000, ge=MIN_RECENT_INPUTS)  # the last N logged inputs
    reference: int = Field(10_000, ge=100)  # images sampled from data/splits/train
    seed: int = 0
    bins: int = Field(10, ge=2, le=100)  # quantile bins of the reference, for the population stability index
    psi_threshold: float = Field(0.2, gt=0.0)  # a feature with PSI above this (and a test below p_value) drifted
    p_value: float = Field(0.01, gt=0.0, lt=1.0)  # two-sample Kolmogorov-Smirnov test
    outside_share: float = Field(0.05, gt=0.0, lt=1.0)  # harmful: tilts outside train's central 90 % pass 10 % by this
