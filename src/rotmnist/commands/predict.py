"""`rotmnist predict`: score image files or `.npy` arrays with the registry's champion (or `--model`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from rotmnist.config import Config
from rotmnist.data.images import read_images
from rotmnist.paths import Paths
from rotmnist.tracking import registry, store

log = logging.getLogger(__name__)


def main(config: Config, paths: Paths, images: Sequence[str], model_uri: str | None = None) -> None:
    """Print `<image>\\t<digit>\\t<probability>` per image."""
    names, x = read_images(images, max_bytes=int(config.predict.max_file_mb * 2**20))
    store.configure_mlflow(config, paths)
    model = registry.load_model(model_uri) if model_uri else registry.load_champion(config.monitor.model_name)
    probs = model.predict_proba(x)
    log.info("scored %d image(s) with %s", len(names), model)
    digits = probs.argmax(axis=1)
    for name, digit, p in zip(names, digits, probs[np.arange(len(digits)), digits], strict=True):
        print(f"{name}\t{int(digit)}\t{float(p):.4f}")
