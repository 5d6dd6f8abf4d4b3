"""Stage `augment`: data/raw (70,000 upright digits) -> data/augmented (490,000 images).

Strategies (`augment.strategy` in params.yaml):

- `exhaustive` (default): every image at every angle of `augment.angles`: the originals first, in input
  order, then one block per angle in the order of `augment.angles`, each block in input order.
- `random`: `generate_dataset`: the originals, then int(n * (oversample_rate - 1)) (truncated) copies of
  randomly drawn images, each rotated by a randomly drawn angle (seeded), in draw order.

Every row keeps its source's label, source_id and mnist_split; `angle` is the rotation applied.
The rotation itself is `rotmnist.data.rotation`.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from rotmnist.config import AugmentConfig, Config
from rotmnist.data.dataset import Dataset, load_dataset, save_dataset
from rotmnist.data.rotation import exhaustive_dataset, generate_dataset
from rotmnist.errors import PipelineError
from rotmnist.paths import Paths

log = logging.getLogger(__name__)


def augment(ds: Dataset, cfg: AugmentConfig, *, progress: bool = False) -> Dataset:
    """The augmented dataset of upright `ds` by the configured strategy."""
    if cfg.strategy == "exhaustive":
        return exhaustive_dataset(ds, cfg.angles, chunk_size=cfg.chunk_size, progress=progress)
    return generate_dataset(ds, cfg.oversample_rate, seed=cfg.seed, angles=cfg.angles, chunk_size=cfg.chunk_size)


def main(config: Config, paths: Paths) -> None:
    """Read data/raw, augment it as configured, write data/augmented."""
    cfg = config.augment
    start = time.perf_counter()
    raw = load_dataset(paths.raw)
    if len(raw) == 0:
        raise PipelineError(f"{paths.raw} holds no images; re-run `rotmnist download`")
    if (raw.angle != 0).any():
        raise PipelineError(f"{paths.raw} holds rotated images (angle != 0); augment expects upright MNIST")
    log.info("augmenting %d images (strategy %s, angles %s)", len(raw), cfg.strategy, list(cfg.angles))
    ds = augment(raw, cfg, progress=True)
    rotated_in = time.perf_counter() - start
    save_dataset(ds, paths.augmented)
    angles, counts = np.unique(ds.angle, return_counts=True)
    log.info(
        "wrote %d images to %s (per angle: %s); %.1f s (%.1f s load + rotate)",
        len(ds),
        paths.augmented,
        ", ".join(f"{a:+d}: {c}" for a, c in zip(angles.tolist(), counts.tolist(), strict=True)),
        time.perf_counter() - start,
        rotated_in,
    )
