"""Stage `tune`: the Optuna sweep on a subset of `train`, scored on `val`; writes `models/best_params.json`.

Every trial is a nested MLflow run under one sweep run (see `rotmnist.tracking.tune`); the study resumes
where a killed run left it, and parallel workers can share it (journal file or PostgreSQL).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rotmnist import io
from rotmnist.config import Config
from rotmnist.data.dataset import load_dataset
from rotmnist.data.sources import make_folds, sweep_subsets
from rotmnist.learning.device import apply_threads
from rotmnist.paths import Paths
from rotmnist.reports import write_report
from rotmnist.tracking import store
from rotmnist.tracking.tune import best_params_document, run_sweep

log = logging.getLogger(__name__)


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """metrics/tune.json from reports/tune.json: the best trial's val accuracy, the trials completed, the time."""
    return {
        "best_val_accuracy": report["best_val_accuracy"],
        "trials_complete": report["trials"]["complete"],
        "seconds": report["seconds"],
    }


def main(config: Config, paths: Paths) -> None:
    """Run the sweep; write models/best_params.json, reports/tune.json and metrics/tune.json."""
    start = time.perf_counter()
    apply_threads(config.train.num_threads)
    train = load_dataset(paths.split("train"))
    val = load_dataset(paths.split("val")) if config.tune.cv_folds == 1 else None
    train, val = sweep_subsets(train, val, config.tune)
    folds = make_folds(train, val, config.tune.cv_folds, config.tune.seed)
    store.configure_mlflow(config, paths)
    tags = store.standard_tags(paths, *paths.lineage_data()) | {"stage": "tune"}
    log.info("sweep on %d train / %s val images", len(train), len(val) if val is not None else "CV")
    result = run_sweep(folds, config, paths, data_hash=tags["data_hash"], tags=tags, source=paths.splits)
    io.write_json(paths.best_params, best_params_document(result))
    report = {
        "best_val_accuracy": round(result.value, 6),
        "best_trial": result.best_trial,
        "trials": result.counts,
        "study": result.study.study_name,
    }
    write_report(paths.report("tune"), paths.headline("tune"), report, headline, start)
    log.info("best trial %d: val accuracy %.4f with %s %s", result.best_trial, result.value, result.spec, result.hyper)
