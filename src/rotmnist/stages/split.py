"""Stage `split`: data/augmented -> data/splits/{train,val,holdout,test}, split by source image (`data.split`)."""

from __future__ import annotations

import logging
import time

from tqdm import tqdm

from rotmnist.config import Config
from rotmnist.data.dataset import load_dataset, save_dataset
from rotmnist.data.split import build_manifest, row_splits
from rotmnist.io import atomic_path, write_json
from rotmnist.paths import SPLITS, Paths

log = logging.getLogger(__name__)


def main(config: Config, paths: Paths) -> None:
    """Split data/augmented by source image into data/splits/<name> and write the split manifest."""
    start = time.perf_counter()
    ds = load_dataset(paths.augmented, mmap=True)  # only the selected rows of x are ever read into memory
    cfg = config.split
    log.info(
        "splitting %d images (seed %d, val %.3g, holdout %.3g)",
        len(ds),
        cfg.seed,
        cfg.val_fraction,
        cfg.holdout_fraction,
    )
    codes = row_splits(ds, cfg)
    manifest = build_manifest(ds, codes)
    for name in SPLITS:
        missing = [angle for angle, per_class in manifest[name]["angles"].items() if not any(per_class.values())]
        if missing:
            log.warning("split %r has no images at %s", name, ", ".join(missing))
    # All four splits or none: they are written inside one temporary folder renamed into place.
    with atomic_path(paths.splits, is_dir=True) as tmp:
        for code, name in enumerate(tqdm(SPLITS, desc="writing splits", unit="split", disable=None)):
            save_dataset(ds.take(codes == code), tmp / name)
    write_json(paths.report("split_manifest"), manifest)
    summary = ", ".join(f"{n} {manifest[n]['images']} images / {manifest[n]['sources']} sources" for n in SPLITS)
    log.info(
        "wrote %s (%s) and %s in %.1f s",
        paths.splits,
        summary,
        paths.report("split_manifest"),
        time.perf_counter() - start,
    )
