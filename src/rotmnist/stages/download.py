"""Stage `download`: MNIST's 70,000 images into `data/raw`, with a data profile and sample digits.

Where the images come from (`download.source`) and how each source is verified lives in
`rotmnist.data.mnist`; the profile (`reports/data_profile.json`) in `rotmnist.data.profile`.
"""

from __future__ import annotations

import logging
import time

from rotmnist.config import Config
from rotmnist.data.dataset import save_dataset
from rotmnist.data.mnist import fetch, to_dataset
from rotmnist.data.profile import profile_dataset
from rotmnist.io import write_json
from rotmnist.learning import plots
from rotmnist.paths import Paths

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.png"


def main(config: Config, paths: Paths) -> None:
    """Fetch MNIST from the configured source into data/raw; write its profile report and sample plot."""
    cfg = config.download
    start = time.perf_counter()
    log.info("fetching MNIST from source %r", cfg.source)
    ds = to_dataset(fetch(cfg, paths))
    profile = profile_dataset(ds)
    save_dataset(ds, paths.raw)
    counts = profile["counts"]
    log.info("wrote %d images (%d train, %d test) to %s", counts["total"], counts["train"], counts["test"], paths.raw)
    write_json(paths.report("data_profile"), profile)
    plots.plot_samples(ds, paths.plots / SAMPLES_FILE, cfg.profile_samples_per_class)
    dup = profile["duplicates"]
    log.info(
        "profile: %d duplicate images, %d test images also in train; wrote %s and %s in %.1f s",
        dup["images"],
        dup["test_in_train"],
        paths.report("data_profile"),
        paths.plots / SAMPLES_FILE,
        time.perf_counter() - start,
    )
