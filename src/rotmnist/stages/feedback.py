"""Stage `feedback`: people's corrections in the request log -> data/feedback/{train,holdout} (`data.feedback`).

Reads every corrected row of the server's request log (`serve.request_log`; no log yet is no
corrections), adds what data/feedback already holds (so corrections the log's retention has since
deleted stay), and writes both folders again, divided by request id (`feedback.holdout_fraction`).
The same log gives the same bytes, so exporting twice changes nothing that DVC sees.

The log is outside DVC, so DVC cannot tell when it has new corrections: export with `rotmnist feedback`,
then `dvc repro` (it sees the changed output, runs this stage again, which writes the same bytes, and
fine-tunes where `finetune.feedback` is true). The outputs are `persist`ed: DVC keeps them while this runs.
"""

from __future__ import annotations

import logging
import time

from rotmnist.config import Config
from rotmnist.data import feedback
from rotmnist.io import atomic_path
from rotmnist.paths import Paths
from rotmnist.storage.request_store import RequestStore, store_url

log = logging.getLogger(__name__)


def logged_corrections(config: Config, paths: Paths) -> feedback.Corrections:
    """Every corrected row of the request log, as corrections (none when the SQLite log does not exist)."""
    with RequestStore(store_url(config.serve, paths)) as requests:
        if requests.missing:
            log.info("no request log at %s: no corrections to export", requests.describe())
            return feedback.empty()
        rows = requests.corrected()
    return feedback.corrections(rows.images, rows.labels, rows.ids, rows.times, rows.corrected_at)


def main(config: Config, paths: Paths) -> None:
    """Merge the log's corrections with data/feedback and write data/feedback/{train,holdout} again."""
    start = time.perf_counter()
    kept = [feedback.load(paths.feedback / name) for name in feedback.FOLDERS]
    merged = feedback.merge(*kept, logged_corrections(config, paths))
    parts = feedback.split(merged, config.feedback.holdout_fraction)
    # Both folders or neither: they are written inside one temporary folder renamed into place.
    with atomic_path(paths.feedback, is_dir=True) as tmp:
        for name in feedback.FOLDERS:
            feedback.save(parts[name], tmp / name)
    new = len(merged) - sum(len(part) for part in kept)  # the merge keeps every known request once
    log.info(
        "%d corrections (%d new from the request log): train %d, holdout %d, in %.1f s",
        len(merged),
        new,
        len(parts["train"]),
        len(parts["holdout"]),
        time.perf_counter() - start,
    )
