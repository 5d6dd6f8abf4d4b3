"""Stage `train`: the tuned model trained on the whole train split, evaluated, logged to MLflow; `models/`.

Reads the sweep's choice (`models/best_params.json`), trains it from scratch with the shared recipe
for `train.epochs` on the train split (people's corrections are the stage `finetune`'s), scores it
on `val` (the network's own scores, as training saw them) and on `test` (per angle and per class, as the
model scores with its orientation pooling, `model.*`), logs the run and the model (`torch.export`, no
pickle; the pooling inside the exported graph) to MLflow, and writes the DVC outputs `monitor` reads, the
report (`reports/train.json`) and its headline figures (`metrics/train.json`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rotmnist import io
from rotmnist.config import Config
from rotmnist.data.dataset import Dataset, load_dataset
from rotmnist.errors import PipelineError
from rotmnist.learning.device import apply_threads, resolve_device
from rotmnist.learning.latency import measure_latency
from rotmnist.learning.metrics import slice_metrics, worst_angle
from rotmnist.learning.model import Pooling, RawImageClassifier, predict_labels
from rotmnist.learning.recipe import PIPELINE_RECIPE_KEYS, hyper_dict, read_best_params, recipe
from rotmnist.learning.training import evaluate, fit
from rotmnist.paths import Paths
from rotmnist.reports import rounded, write_report
from rotmnist.spec import describe
from rotmnist.tracking import store
from rotmnist.tracking.train import log_epoch, log_split_inputs, log_training_results, start_run, write_run_reference

log = logging.getLogger(__name__)

CURVE_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")


def test_report(model: RawImageClassifier, test: Dataset) -> dict[str, Any]:
    """Accuracy on the test split: overall, per angle (upright and each rotation) and per class.

    `worst_rotated_accuracy` is there only when the split has rotated images (the report holds no null).
    `every_angle_errors` counts the digits misread at all their angles: the part of the error that no
    rotation robustness removes.
    """
    report = slice_metrics(test.y, predict_labels(model, test.x), test.angle, test.source_id)
    rotated = [m["accuracy"] for a, m in report["per_angle"].items() if a != "0"]
    return report | ({"worst_rotated_accuracy": min(rotated)} if rotated else {})


def run_metrics(report: dict[str, Any], val_scores: dict[str, float], lat: dict[str, float]) -> dict[str, float]:
    """The final run's MLflow metrics: test accuracy overall, per angle and class; val accuracy; latency."""
    metrics = {
        "test_accuracy": report["accuracy"],
        "test_worst_rotated_accuracy": report.get("worst_rotated_accuracy"),
        "test_sources_wrong_at_every_angle": report["every_angle_errors"]["sources_wrong_at_every_angle"],
        **{f"test_accuracy_angle_{a}": m["accuracy"] for a, m in report["per_angle"].items()},
        **{f"test_accuracy_class_{c}": m["accuracy"] for c, m in report["per_class"].items()},
        **({"final_val_accuracy": val_scores["accuracy"]} if val_scores else {}),
        **lat,
    }
    return {k: v for k, v in metrics.items() if v is not None}


def write_plots(paths: Paths, history: list[dict[str, float]], report: dict[str, Any]) -> list[Path]:
    """DVC plots data: the training curves and the test accuracy per angle and per class (CSV).

    The curves have one row per epoch that scored the val split (`train.val_every`; the last always does).
    """
    keys = [k for k in ("epoch", *CURVE_KEYS) if history and k in history[-1]]
    curves = [
        {k: round(m[k], 6) if k != "epoch" else int(m[k]) for k in keys} for m in history if set(keys) <= m.keys()
    ]
    angles = [{"angle": int(a), "accuracy": round(m["accuracy"], 6)} for a, m in report["per_angle"].items()]
    classes = [{"digit": int(c), "accuracy": round(m["accuracy"], 6)} for c, m in report["per_class"].items()]
    files = {
        paths.plots / "train" / "curves.csv": curves,
        paths.plots / "train" / "test_angle_accuracy.csv": sorted(angles, key=lambda r: r["angle"]),
        paths.plots / "train" / "test_class_accuracy.csv": classes,
    }
    for path, rows in files.items():
        io.write_csv(path, rows)
    return list(files)


def summary(
    report: dict[str, Any], val_scores: dict[str, float], history: list[dict[str, float]], hp_epochs: int, n_train: int
) -> dict[str, Any]:
    """reports/train.json without latency and timings: val and test accuracy (per angle, class), throughput.

    `train_images` is the size of the train split, `images_trained` what all epochs together trained on, and
    `images_per_second` that count over the seconds the epochs took (the fit's throughput).

    Keys without a value (no val split, no rotated test image) are left out: the report holds no null.
    """
    images = int(sum(m["epoch_images"] for m in history))
    return {
        **({"val_accuracy": val_scores["accuracy"]} if "accuracy" in val_scores else {}),
        "test": report,
        "epochs": hp_epochs,
        "train_images": n_train,
        "images_trained": images,
        "images_per_second": round(images / sum(m["epoch_seconds"] for m in history), 1),
    }


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """metrics/train.json from reports/train.json: val and test accuracy (upright, worst angle), speed, time."""
    test = report["test"]
    angle, accuracy = worst_angle({a: m["accuracy"] for a, m in test["per_angle"].items()})
    return {
        "val_accuracy": report.get("val_accuracy"),
        "test_accuracy": test["accuracy"],
        "test_upright_accuracy": test["per_angle"].get("0", {}).get("accuracy"),
        "test_worst_angle": angle,
        "test_worst_angle_accuracy": accuracy,
        "images_per_second": report["images_per_second"],
        "seconds": report["seconds"],
    }


def main(config: Config, paths: Paths) -> None:
    """Train the tuned model on the whole train split; evaluate on val and test; log it; write models/ and reports."""
    start = time.perf_counter()
    apply_threads(config.train.num_threads)
    spec, hyper, best = read_best_params(paths.best_params)
    splits = {s: load_dataset(paths.split(s)) for s in ("train", "val", "test")}
    train, val, test = splits["train"], splits["val"], splits["test"]
    if len(train) == 0 or len(test) == 0:
        raise PipelineError("the train and test splits must not be empty; check the split stage")
    hp = recipe(config, hyper, config.train.epochs, PIPELINE_RECIPE_KEYS)
    device = resolve_device(config.train.device)
    experiment_id = store.configure_mlflow(config, paths)
    tags = store.standard_tags(paths, *paths.lineage_data())
    tags |= {"stage": "train", "family": spec["family"]}
    tags |= {"tuned_by": str(best.get("parent_run_id", "")), "tuned_trial": str(best.get("trial", ""))}
    name = f"train-{describe(spec)}-e{hp.epochs}"
    pooling = Pooling(tuple(config.model.orientations), config.model.pool_below)
    params = {**spec, **hyper_dict(hp, device), "train_images": len(train), "device": device.type}
    params |= {"pooling_orientations": list(pooling.orientations), "pooling_below": pooling.below}
    with start_run(name, tags, params) as run_id:
        log_split_inputs(splits, paths, tags["data_hash"])
        fitted = fit(
            spec,
            train,
            val,
            hp,
            device=device,
            seed=config.train.seed,
            on_epoch=log_epoch,
            desc=name,
            score_every=config.train.val_every,
        )
        model = fitted.model.to(memory_format=torch.contiguous_format).cpu().eval().pool(pooling)
        report = test_report(model, test)
        val_scores = evaluate(model, val.x, val.y) if len(val) else {}
        lat = measure_latency(model, test.x, config.latency)
        plot_files = write_plots(paths, fitted.history, report)
        model_uri = log_training_results(
            model, run_metrics(report, val_scores, lat), plot_files, best, test.x[:5].astype(np.float32)
        )
    with io.atomic_path(paths.model_file) as tmp:
        torch.save(model.state_dict(), tmp)
    reference = {"experiment_id": experiment_id, "spec": spec, "pooling": pooling.record()}
    write_run_reference(paths.run_reference, run_id, model_uri, **reference)
    detail = summary(report, val_scores, fitted.history, hp.epochs, len(train)) | lat
    detail = write_report(paths.report("train"), paths.headline("train"), rounded(detail), headline, start)
    log.info(
        "test accuracy %.4f (upright %.4f, worst rotation %.4f) in %.0f s; model %s",
        report["accuracy"],
        report["per_angle"].get("0", {}).get("accuracy", float("nan")),
        report.get("worst_rotated_accuracy", float("nan")),
        detail["seconds"],
        model_uri,
    )
