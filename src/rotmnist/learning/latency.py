"""The one latency timer: how long a caller waits for predictions, one image at a time and in batches.

`train`, every sweep trial and `compare` time their models here, with the settings of `latency` in
params.yaml, so their figures are comparable and carry the same metric names.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from rotmnist.learning.device import torch_threads
from rotmnist.learning.model import RawImageClassifier, predict_proba

if TYPE_CHECKING:
    from rotmnist.config import LatencyConfig


def measure_latency(model: RawImageClassifier, x: np.ndarray, cfg: LatencyConfig) -> dict[str, float]:
    """End-to-end prediction time on the CPU: one image per call (p50, p99 in ms), and batch throughput.

    Each call is what a caller does (a numpy array of 0-255 pixels in, probabilities out), after
    `cfg.warmup` untimed calls, with `cfg.num_threads` threads; the images cycle through `x`.
    """
    if len(x) == 0:
        raise ValueError("need images to time predictions on")
    images = np.ascontiguousarray(x[: max(cfg.single_calls, cfg.batch_size)], dtype=np.float32)
    batch = np.resize(images, (cfg.batch_size, *images.shape[1:]))  # repeats images if there are fewer
    singles = np.empty(cfg.single_calls)
    with torch_threads(cfg.num_threads):
        for i in range(cfg.warmup):
            predict_proba(model, images[i % len(images)][None])
        for i in range(cfg.single_calls):
            one = images[i % len(images)][None]
            start = time.perf_counter()
            predict_proba(model, one)
            singles[i] = time.perf_counter() - start
        predict_proba(model, batch)
        batches = np.empty(cfg.batch_calls)
        for i in range(cfg.batch_calls):
            start = time.perf_counter()
            predict_proba(model, batch)
            batches[i] = time.perf_counter() - start
    return {
        "latency_ms_p50": 1000 * float(np.percentile(singles, 50)),
        "latency_ms_p99": 1000 * float(np.percentile(singles, 99)),
        "batch_images_per_second": cfg.batch_size / float(np.median(batches)),
    }
