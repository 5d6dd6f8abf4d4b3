"""Stage `finetune`: the candidate the gate judges; train's model, or that model fine-tuned on people's corrections.

With `finetune.feedback: false` (the default) or no corrections in `data/feedback/train`, the candidate
is train's model as it is: `models/candidate.json` names train's run and `models/candidate.pt` holds the
same weights, so `monitor` registers exactly what `train` logged.

With `finetune.feedback: true` and corrections, the stage warm-starts from train's model (its weights and
pixel normalisation) and trains it for `finetune.epochs` (`finetune.lr`, cosine decay) on the train split
replayed (`finetune.replay_rotations` of the seven rotations of every source digit per epoch, drawn afresh)
together with the newest `finetune.feedback_cap` corrections, each weighing `finetune.feedback_weight` in
the loss. Replay keeps what the model knew; the corrections teach it what people saw. The candidate's weights
are then a blend, `finetune.blend` of the fine-tuned model's and the rest of train's (weight-space ensembling):
most of what the corrections taught for a fraction of what the fine-tune cost the trained angles. It is
minutes, not the from-scratch training's half hour, and the sweep's choice is kept rather than re-tuned.

The candidate scores as train's model does (its orientation pooling, `model.*`). It scores the candidate
on the test split at every angle against train's own scores of its model
(reports/train.json: the same weights, the same digits; the report's `test_change` is the difference in points),
logs an MLflow run with the model, and writes the candidate.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from typing import Any

import numpy as np
import torch

from rotmnist import io
from rotmnist.config import Config
from rotmnist.data import feedback
from rotmnist.data.dataset import Dataset, load_dataset
from rotmnist.errors import PipelineError
from rotmnist.io import read_json
from rotmnist.learning.device import apply_threads, resolve_device
from rotmnist.learning.metrics import slice_metrics
from rotmnist.learning.model import RawImageClassifier, load_pipeline_model, predict_labels, serving_copy
from rotmnist.learning.recipe import PIPELINE_RECIPE_KEYS, Hyper, hyper_dict, read_best_params
from rotmnist.learning.training import fit
from rotmnist.paths import Paths
from rotmnist.reports import rounded, write_report
from rotmnist.spec import describe
from rotmnist.tracking import store
from rotmnist.tracking.train import (
    log_epoch,
    log_split_inputs,
    log_training_results,
    read_run_reference,
    start_run,
    write_run_reference,
)

log = logging.getLogger(__name__)

# The recipe keys of `train` the fine-tune keeps (its learning rate, schedule, epochs and replay are its own).
KEPT_RECIPE_KEYS = tuple(k for k in PIPELINE_RECIPE_KEYS if k not in ("schedule", "rotations_per_epoch"))


def finetune_hyper(config: Config, tuned: dict[str, Any]) -> Hyper:
    """The fine-tune's settings: `finetune`'s lr (cosine decay to 0), epochs, replay and correction weight; the
    tuned weight decay and batch size; and train's recipe (shift, label smoothing, precision, EMA)."""
    ft = config.finetune
    return Hyper(
        lr=ft.lr,
        weight_decay=tuned["weight_decay"],
        batch_size=tuned["batch_size"],
        epochs=ft.epochs,
        schedule="cosine",
        rotations_per_epoch=ft.replay_rotations,
        feedback_weight=ft.feedback_weight,
        **config.train.model_dump(include=set(KEPT_RECIPE_KEYS)),
    )


def blended(base: RawImageClassifier, tuned: RawImageClassifier, share: float) -> RawImageClassifier:
    """A copy of `tuned` whose every float tensor (weights, batch-norm statistics, pixel normalisation) is
    `share` of its own and the rest `base`'s; share 1 is `tuned` as it is."""
    if share == 1.0:
        return tuned
    start = base.state_dict()
    state = {
        k: torch.lerp(start[k].to(v), v, share) if v.is_floating_point() else v for k, v in tuned.state_dict().items()
    }
    model = copy.deepcopy(tuned)
    model.load_state_dict(state)
    return model


def per_angle(model: RawImageClassifier, test: Dataset) -> dict[str, Any]:
    """Test accuracy overall and at each angle."""
    return accuracies(slice_metrics(test.y, predict_labels(model, test.x), test.angle))


def accuracies(report: dict[str, Any]) -> dict[str, Any]:
    """Accuracy overall and at each angle of slice metrics (`slice_metrics`, or a stage report's copy of them)."""
    return {"accuracy": report["accuracy"], "per_angle": {a: m["accuracy"] for a, m in report["per_angle"].items()}}


def test_change(base: dict[str, Any], tuned: dict[str, Any]) -> dict[str, Any]:
    """The fine-tune's change of test accuracy, in points, at each angle; and the largest drop (0 without one)."""
    change = {a: round(100 * (tuned["per_angle"][a] - acc), 4) for a, acc in base["per_angle"].items()}
    worst = min(change, key=lambda a: (change[a], int(a)))
    return {"per_angle": change, "largest_drop": max(0.0, -change[worst]), "largest_drop_angle": int(worst)}


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """metrics/finetune.json: whether it fine-tuned and, if so, the largest drop of a trained angle on test."""
    return {
        "finetuned": report["finetuned"],
        "test_largest_drop_points": report.get("test_change", {}).get("largest_drop"),
        "seconds": report["seconds"],
    }


def pass_through(paths: Paths, base_reference: dict[str, Any]) -> None:
    """The candidate is train's model: its weights and its run."""
    with io.atomic_path(paths.candidate_file) as tmp:
        shutil.copyfile(paths.model_file, tmp)
    io.write_json(
        paths.candidate_reference, base_reference | {"finetuned": False, "base_run_id": base_reference["run_id"]}
    )


def load_inputs(paths: Paths, base_reference: dict[str, Any]) -> tuple[RawImageClassifier, dict, dict, dict]:
    """Train's model, the sweep's choice (spec, tuned settings, document) it was trained with."""
    base, _ = load_pipeline_model(paths.model_file, paths.run_reference)
    spec, tuned, best = read_best_params(paths.best_params)
    if describe(spec) != describe(base_reference["spec"]):
        trained = describe(base_reference["spec"])
        raise PipelineError(
            f"{paths.best_params} ({describe(spec)}) is not train's model ({trained}); run `dvc repro train`"
        )
    return base, spec, tuned, best


def fine_tune(config: Config, paths: Paths, base_reference: dict[str, Any], corrections: Dataset) -> dict[str, Any]:
    """Fine-tune train's model on the corrections with the train split replayed, in an MLflow run; the report."""
    apply_threads(config.train.num_threads)
    base, spec, tuned, best = load_inputs(paths, base_reference)
    before = accuracies(read_json(paths.report("train"), made_by="train")["test"])  # train's model on test
    train, test = load_dataset(paths.split("train")), load_dataset(paths.split("test"))
    if len(train) == 0 or len(test) == 0:
        raise PipelineError("the train and test splits must not be empty; check the split stage")
    hp, device = finetune_hyper(config, tuned), resolve_device(config.train.device)
    store.configure_mlflow(config, paths)
    tags = store.standard_tags(paths, *paths.lineage_data(corrections=True))
    tags |= {"stage": "finetune", "family": spec["family"], "base_run_id": base_reference["run_id"]}
    name = f"finetune-{describe(spec)}-n{len(corrections)}-e{hp.epochs}"
    params = {**spec, **hyper_dict(hp, device), "device": device.type, "base_run_id": base_reference["run_id"]}
    params |= {"train_images": len(train), "feedback_images": len(corrections), "blend": config.finetune.blend}
    log.info("fine-tuning train's model on %d corrections with %d train digits replayed", len(corrections), len(train))
    mix = Dataset.concat([train, corrections])  # replay: the corrections beside every digit train learned from
    with start_run(name, tags, params) as run_id:
        log_split_inputs({"train": train, "test": test}, paths, tags["data_hash"])
        fitted = fit(
            spec, mix, None, hp, device=device, seed=config.finetune.seed, on_epoch=log_epoch, desc=name, init=base
        )
        model = blended(base, serving_copy(fitted.model), config.finetune.blend).pool(base.pooling)
        after = per_angle(model, test)
        change = test_change(before, after)
        metrics = {"test_accuracy": after["accuracy"], "test_largest_drop_points": change["largest_drop"]}
        metrics |= {f"test_accuracy_angle_{a}": acc for a, acc in after["per_angle"].items()}
        metrics |= {f"test_change_points_angle_{a}": c for a, c in change["per_angle"].items()}
        model_uri = log_training_results(model, metrics, [], best, test.x[:5].astype(np.float32))
    with io.atomic_path(paths.candidate_file) as tmp:
        torch.save(model.state_dict(), tmp)
    extra = {"experiment_id": base_reference.get("experiment_id"), "spec": spec, "finetuned": True}
    extra |= {"pooling": base.pooling.record()}  # train's model scores the same way
    write_run_reference(paths.candidate_reference, run_id, model_uri, **extra, base_run_id=base_reference["run_id"])
    images = int(sum(m["epoch_images"] for m in fitted.history))
    seconds = sum(m["epoch_seconds"] for m in fitted.history)
    return {
        "finetuned": True,
        "feedback_images": len(corrections),
        "base_run_id": base_reference["run_id"],
        "run_id": run_id,
        "epochs": hp.epochs,
        "blend": config.finetune.blend,
        "images_trained": images,
        "images_per_second": round(images / seconds, 1),
        "test": after,
        "base_test": before,
        "test_change": change,
    }


def main(config: Config, paths: Paths) -> None:
    """Write the candidate (models/candidate.{pt,json}): train's model, or it fine-tuned on the corrections."""
    start = time.perf_counter()
    ft = config.finetune
    base_reference = read_run_reference(paths.run_reference, made_by="train")
    corrections = feedback.training_rows(paths.feedback / "train", ft.feedback_cap) if ft.feedback else None
    if corrections is None or len(corrections) == 0:
        why = "finetune.feedback is false" if corrections is None else "data/feedback/train holds no corrections"
        log.info("%s: the candidate is train's model (run %s)", why, base_reference["run_id"])
        pass_through(paths, base_reference)
        report = {"finetuned": False, "feedback_images": 0, "base_run_id": base_reference["run_id"]}
        write_report(paths.report("finetune"), paths.headline("finetune"), report, headline, start)
        return
    report = fine_tune(config, paths, base_reference, corrections)
    report = write_report(paths.report("finetune"), paths.headline("finetune"), rounded(report), headline, start)
    change = report["test_change"]
    log.info(
        "fine-tuned on %d corrections in %.0f s: test accuracy %.4f (train's model %.4f); largest drop %.2f points "
        "(%d deg); candidate run %s",
        len(corrections),
        report["seconds"],
        report["test"]["accuracy"],
        report["base_test"]["accuracy"],
        change["largest_drop"],
        change["largest_drop_angle"],
        report["run_id"],
    )
