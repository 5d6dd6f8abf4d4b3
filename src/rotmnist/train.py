"""Training: the in-memory loop both stages use, `learn_model`, and the stage `train` (final model, logged to MLflow).

The split stays a uint8 tensor in memory (on the GPU when there is one); each epoch draws a seeded
permutation and forms batches by indexing, shifts them by a few pixels at random (vectorised), and
the model normalises them inside (`RawImageClassifier.logits`), so training and serving share one path.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from rotmnist.errors import PipelineError
from rotmnist.io import N_CLASSES, Dataset
from rotmnist.model import RawImageClassifier, classifier_from_spec, normalize_spec

if TYPE_CHECKING:
    from rotmnist.config import Config
    from rotmnist.paths import Paths

log = logging.getLogger(__name__)

EVAL_BATCH = 2048
SCHEDULES = ("onecycle", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
MIN_ONECYCLE_STEPS = 8
EpochCallback = Callable[[dict[str, float]], None]


@dataclass(frozen=True)
class Hyper:
    """Optimisation settings of one training run (a trial's or the final model's)."""

    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    epochs: int = 1
    label_smoothing: float = 0.0
    shift: int = 0  # random translation of each training image by up to this many pixels
    schedule: str = "onecycle"
    precision: str = "fp32"  # of the training step's matmuls and convolutions; see resolve_precision

    def __post_init__(self) -> None:
        checks = {
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "batch_size": isinstance(self.batch_size, int) and self.batch_size >= 1,
            "epochs": isinstance(self.epochs, int) and self.epochs >= 1,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "shift": isinstance(self.shift, int) and 0 <= self.shift <= 8,
            "schedule": self.schedule in SCHEDULES,
            "precision": self.precision in PRECISIONS,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"invalid training settings {bad}: {self}; "
                f"schedule must be one of {list(SCHEDULES)}, precision one of {list(PRECISIONS)}"
            )


@dataclass
class Fitted:
    """A trained classifier and its per-epoch history."""

    model: RawImageClassifier
    history: list[dict[str, float]] = field(default_factory=list)


def apply_threads(num_threads: int) -> None:
    """Use `num_threads` CPU threads for torch (0 = leave torch's default)."""
    if num_threads:
        torch.set_num_threads(num_threads)


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` -> CUDA when available, else CPU; `cuda` without a GPU is an error."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX); without it bf16 is emulated, slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto` -> bf16 autocast where the hardware runs it natively (CUDA with bf16, CPUs with AVX512-BF16/AMX).

    Only the training step uses it (weights, optimiser state, loss and evaluation stay float32); on such a
    CPU it trains the default CNN about 1.6x faster (see README).
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {name!r}")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def pixel_stats(x: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of uint8 pixels, exactly, from their histogram."""
    if len(x) == 0:
        raise ValueError("cannot compute pixel statistics of an empty set")
    counts = np.bincount(np.asarray(x, np.uint8).ravel(), minlength=256).astype(np.float64)
    values = np.arange(256, dtype=np.float64)
    n = counts.sum()
    mean = float((counts * values).sum() / n)
    std = float(math.sqrt(max((counts * (values - mean) ** 2).sum() / n, 1e-12)))
    return mean, std


def subsample_sources(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """The rows of a seeded `fraction` of the source images (all rotations of a source stay together)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    if fraction == 1:
        return ds
    sources = np.unique(ds.source_id)
    n = max(1, round(len(sources) * fraction))
    keep = np.random.default_rng(seed).choice(sources, size=n, replace=False)
    return ds.take(np.isin(ds.source_id, keep))


def source_folds(ds: Dataset, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train rows, validation rows) pairs; folds are made of whole source images, so rotations never leak."""
    sources = np.unique(ds.source_id)
    if k < 2 or k > len(sources):
        raise ValueError(f"need 2 <= k <= number of source images ({len(sources)}), got k={k}")
    fold_of = dict(zip(np.random.default_rng(seed).permutation(sources), np.arange(len(sources)) % k, strict=True))
    fold = np.vectorize(fold_of.__getitem__, otypes=[np.int64])(ds.source_id)
    return [(np.flatnonzero(fold != i), np.flatnonzero(fold == i)) for i in range(k)]


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of a batch (N, H, W) by its own random offset in [-max_shift, max_shift], zero fill."""
    if max_shift == 0:
        return x
    n, h, w = x.shape
    padded = F.pad(x, (max_shift, max_shift, max_shift, max_shift))
    offsets = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).to(x.device)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)
    return padded[torch.arange(n, device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _optimizer(model: torch.nn.Module, hp: Hyper, steps: int):
    # No weight decay on biases and batch-norm parameters.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=hp.lr)
    # OneCycle needs a few steps per phase (it divides by zero below about 5): very short runs keep a constant lr.
    if hp.schedule == "onecycle" and steps >= MIN_ONECYCLE_STEPS:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=steps, pct_start=0.25)
    elif hp.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


def evaluate(model: RawImageClassifier, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Mean cross-entropy and accuracy of `model` on raw images (eval mode, batched)."""
    device = next(model.parameters()).device
    x = torch.as_tensor(x, device=device)
    y = torch.as_tensor(y, device=device).long()
    if len(x) == 0:
        raise ValueError("cannot evaluate on an empty set")
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(x), EVAL_BATCH):
            z = model.logits(x[i : i + EVAL_BATCH])
            loss += float(F.cross_entropy(z, y[i : i + EVAL_BATCH], reduction="sum"))
            correct += int((z.argmax(1) == y[i : i + EVAL_BATCH]).sum())
    model.train(was_training)
    return {"loss": loss / len(x), "accuracy": correct / len(x)}


def fit(
    spec: Mapping[str, Any],
    train: Dataset,
    val: Dataset | None,
    hp: Hyper,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    on_epoch: EpochCallback | None = None,
    desc: str = "train",
) -> Fitted:
    """Train a fresh model of `spec` on `train`; after each epoch score `val` and call `on_epoch(metrics)`.

    `on_epoch` may raise (e.g. optuna.TrialPruned) to stop early. Seeded: same inputs, same model.
    """
    spec = normalize_spec(spec)
    if len(train) == 0:
        raise ValueError("the training set is empty")
    device = torch.device(device)
    torch.manual_seed(seed)
    model = classifier_from_spec(spec, *pixel_stats(train.x)).to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    x = torch.from_numpy(np.ascontiguousarray(train.x)).to(device)
    y = torch.from_numpy(train.y.astype(np.int64)).to(device)
    xv = yv = None
    if val is not None and len(val):
        xv = torch.from_numpy(np.ascontiguousarray(val.x)).to(device)
        yv = torch.from_numpy(val.y.astype(np.int64)).to(device)
    steps_per_epoch = math.ceil(len(x) / hp.batch_size)
    opt, sched = _optimizer(model, hp, hp.epochs * steps_per_epoch)
    bf16 = resolve_precision(hp.precision, device) == "bf16"
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    for epoch in range(1, hp.epochs + 1):
        model.train()
        # Running sums stay on the device: no host sync per step (it stalls a GPU).
        start = time.perf_counter()
        total_loss, correct = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)
        order = torch.randperm(len(x), generator=gen).to(device)
        bar = tqdm(
            range(steps_per_epoch), desc=f"{desc} epoch {epoch}/{hp.epochs}", leave=False, mininterval=2, disable=None
        )
        for step in bar:
            idx = order[step * hp.batch_size : (step + 1) * hp.batch_size]
            xb, yb = random_shift(x[idx], hp.shift, gen), y[idx]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model.logits(xb)
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=hp.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == yb).sum()
        bar.close()
        total_loss, correct = float(total_loss), int(correct)
        if not math.isfinite(total_loss):
            raise FloatingPointError(f"training diverged (loss {total_loss}) at epoch {epoch}; lower the learning rate")
        seconds = time.perf_counter() - start
        metrics = {
            "epoch": epoch,
            "train_loss": total_loss / len(x),
            "train_accuracy": correct / len(x),
            "lr": sched.get_last_lr()[0],
            "epoch_seconds": seconds,
            "images_per_second": len(x) / seconds,
        }
        if xv is not None:
            scores = evaluate(model, xv, yv)
            metrics |= {"val_loss": scores["loss"], "val_accuracy": scores["accuracy"]}
        log.info("%s epoch %d/%d: %s", desc, epoch, hp.epochs, _fmt(metrics))
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    model.eval()
    return Fitted(model=model, history=history)


def _fmt(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "epoch")


def hyper_dict(hp: Hyper, device: torch.device) -> dict[str, Any]:
    """`hp` as a plain dict for MLflow params, with the precision that runs on `device` (not "auto")."""
    return asdict(hp) | {"precision": resolve_precision(hp.precision, device)}


# ---- learn_model: the assignment's prototype --------------------------------------------------------


def as_dataset(dataset: Any) -> Dataset:
    """An io.Dataset, or anything with `.x` (N, 28, 28) pixels 0-255 and `.y` digits (optional `.source_id`, `.angle`).

    Without `.source_id` each row counts as its own source image.
    """
    if isinstance(dataset, Dataset):
        return dataset
    x, y = getattr(dataset, "x", None), getattr(dataset, "y", None)
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise TypeError(f"dataset must be a rotmnist.io.Dataset or have numpy arrays .x and .y; got {type(dataset)}")
    if x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) != len(y):
        raise ValueError(f"dataset.x must be (N, 28, 28) and dataset.y (N,); got {x.shape} and {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= N_CLASSES or not np.array_equal(y, np.rint(y))):
        raise ValueError(f"dataset.y must hold whole digits 0-9, got values in [{y.min()}, {y.max()}]")
    sources = getattr(dataset, "source_id", None)
    if sources is not None:
        sources = np.asarray(sources)
        if sources.shape != y.shape or sources.dtype.kind not in "iu":
            raise ValueError(f"dataset.source_id must be integers, one per image; got {sources.dtype} {sources.shape}")
        if len(sources) and (sources.min() < 0 or sources.max() > np.iinfo(np.int32).max):
            raise ValueError("dataset.source_id must be in 0..2**31-1")
    if x.dtype.kind == "f" and x.size and not np.isfinite(x).all():
        raise ValueError("dataset.x holds NaN or infinite pixels")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise ValueError(f"dataset.x pixels must be in 0..255, got values in [{x.min()}, {x.max()}]")
    if x.dtype.kind == "f" and x.size and 0 < x.max() <= 1.0:
        raise ValueError("dataset.x looks scaled to [0, 1]; pass pixels in 0..255 (multiply by 255)")
    n = len(x)
    return Dataset(
        x=np.rint(x).astype(np.uint8),
        y=y.astype(np.uint8),
        source_id=(np.arange(n) if sources is None else sources).astype(np.int32),
        angle=np.asarray(getattr(dataset, "angle", np.zeros(n)), dtype=np.int8),
        mnist_split=np.zeros(n, np.int8),
    )


def holdout_sources(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split `ds` into (train, validation) by source image: a seeded `fraction` of the sources validates."""
    sources = np.unique(ds.source_id)
    n_val = round(len(sources) * fraction)
    if not 1 <= n_val < len(sources):
        raise ValueError(f"cannot hold out {fraction:g} of {len(sources)} source images for validation")
    val_sources = np.random.default_rng(seed).choice(sources, size=n_val, replace=False)
    is_val = np.isin(ds.source_id, val_sources)
    return ds.take(~is_val), ds.take(is_val)


def learn_model(dataset: Any, *, config: Config | None = None, paths: Paths | None = None) -> RawImageClassifier:
    """Tune on a validation split of `dataset` (k-fold CV when tune.cv_folds > 1), then train the best; return it.

    The same sweep as the stage `tune` (`tune.run_sweep`, logged to MLflow), on `dataset` instead of the
    split files; the returned RawImageClassifier has `.predict(x)` -> digits. Settings come from
    params.yaml unless `config` is given.
    """
    from rotmnist import tracking, tune
    from rotmnist.config import load_config
    from rotmnist.paths import Paths as _Paths

    ds = as_dataset(dataset)
    if len(ds) == 0:
        raise ValueError("learn_model needs a non-empty dataset")
    config = config or load_config()
    paths = paths or _Paths.here()
    apply_threads(config.train.num_threads)
    cfg = config.tune
    if cfg.cv_folds == 1:
        fit_part, val_part = holdout_sources(ds, config.split.val_fraction, cfg.seed)
    else:
        fit_part, val_part = ds, None
    sweep_train, sweep_val = tune.sweep_subsets(fit_part, val_part, cfg)
    tracking.configure_mlflow(config, paths)
    tags = {
        "git_commit": tracking.git_commit(paths),
        "data_hash": tracking.array_digest(ds.x, ds.y),
        "stage": "learn_model",
    }
    result = tune.run_sweep(sweep_train, sweep_val, config, paths, data_hash=tags["data_hash"], tags=tags)
    hp = tune.recipe(config, result.hyper, config.train.epochs)
    device = resolve_device(config.train.device)
    fitted = fit(result.spec, fit_part, val_part, hp, device=device, seed=config.train.seed, desc="learn_model")
    return fitted.model.cpu()


# ---- the stage ------------------------------------------------------------------------------------


def read_best_params(path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """`models/best_params.json` from `tune`: (model spec, optimiser settings, the whole document)."""
    from rotmnist import io as rio

    doc = rio.read_json(path, made_by="tune")
    if not isinstance(doc, dict) or not isinstance(doc.get("spec"), dict) or not isinstance(doc.get("hyper"), dict):
        raise PipelineError(f"{path} must hold objects 'spec' and 'hyper' (written by `rotmnist tune`)")
    try:
        spec = normalize_spec(doc["spec"])
        hyper = {k: doc["hyper"][k] for k in ("lr", "weight_decay", "batch_size")}
        Hyper(**hyper)
    except (KeyError, TypeError, ValueError) as err:
        raise PipelineError(f"{path}: invalid best params: {err}") from None
    return spec, hyper, doc


def test_report(model: RawImageClassifier, test: Dataset) -> dict[str, Any]:
    """Accuracy on the test split: overall, per angle (upright and each rotation) and per class."""
    from rotmnist.metrics import slice_metrics
    from rotmnist.model import predict_labels

    report = slice_metrics(test.y, predict_labels(model, test.x), test.angle)
    rotated = [m["accuracy"] for a, m in report["per_angle"].items() if a != "0"]
    report["worst_rotated_accuracy"] = min(rotated) if rotated else None
    return report


def _round(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 6)
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    return obj


def write_plots(paths: Paths, history: list[dict[str, float]], report: dict[str, Any]) -> list:
    """DVC plots data: the training curves per epoch and the test accuracy per angle and per class (CSV)."""
    from rotmnist import io as rio

    curves = [
        {k: round(m[k], 6) if k != "epoch" else int(m[k]) for k in ("epoch", *_CURVE_KEYS) if k in m} for m in history
    ]
    angles = [{"angle": int(a), "accuracy": round(m["accuracy"], 6)} for a, m in report["per_angle"].items()]
    classes = [{"digit": int(c), "accuracy": round(m["accuracy"], 6)} for c, m in report["per_class"].items()]
    files = {
        paths.plots / "train" / "curves.csv": curves,
        paths.plots / "train" / "test_angle_accuracy.csv": sorted(angles, key=lambda r: r["angle"]),
        paths.plots / "train" / "test_class_accuracy.csv": classes,
    }
    for path, rows in files.items():
        rio.write_csv(path, rows)
    return list(files)


_CURVE_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")


def main(config: Config, paths: Paths) -> None:
    """Train the tuned model on the whole train split; evaluate on val and test; log it; write models/ and metrics/."""
    import mlflow

    from rotmnist import io as rio
    from rotmnist import tracking, tune
    from rotmnist.model import describe

    apply_threads(config.train.num_threads)
    start = time.perf_counter()
    spec, hyper, best = read_best_params(paths.models / "best_params.json")
    train, val, test = (rio.load_dataset(paths.split(s)) for s in ("train", "val", "test"))
    if len(train) == 0 or len(test) == 0:
        raise PipelineError("the train and test splits must not be empty; check the split stage")
    hp = tune.recipe(config, hyper, config.train.epochs)
    device = resolve_device(config.train.device)
    experiment_id = tracking.configure_mlflow(config, paths)
    tags = tracking.standard_tags(paths, "data/splits") | {"stage": "train", "family": spec["family"]}
    tags |= {"tuned_by": str(best.get("parent_run_id", "")), "tuned_trial": str(best.get("trial", ""))}
    name = f"train-{describe(spec)}-e{hp.epochs}"
    with mlflow.start_run(run_name=name, tags=tags) as run:
        mlflow.log_params(
            {
                **spec,
                **hyper_dict(hp, device),
                "train_images": len(train),
                "device": device.type,
            }
        )
        for split, ds in (("train", train), ("val", val), ("test", test)):
            digest = tracking.array_digest(tags["data_hash"].encode(), split.encode())
            context = {"train": "training", "val": "validation", "test": "testing"}[split]
            tracking.log_dataset(ds, split, context, paths.split(split), digest)

        def on_epoch(m: dict[str, float]) -> None:
            mlflow.log_metrics({k: v for k, v in m.items() if k != "epoch"}, step=int(m["epoch"]))

        fitted = fit(spec, train, val, hp, device=device, seed=config.train.seed, on_epoch=on_epoch, desc=name)
        model = fitted.model.to(memory_format=torch.contiguous_format).cpu().eval()
        report = test_report(model, test)
        val_scores = evaluate(model, val.x, val.y) if len(val) else {}
        lat = tune.latency(model, test.x)
        metrics = {
            "test_accuracy": report["accuracy"],
            "test_worst_rotated_accuracy": report["worst_rotated_accuracy"],
            **{f"test_accuracy_angle_{a}": m["accuracy"] for a, m in report["per_angle"].items()},
            **{f"test_accuracy_class_{c}": m["accuracy"] for c, m in report["per_class"].items()},
            **({"final_val_accuracy": val_scores["accuracy"]} if val_scores else {}),
            **lat,
        }
        mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None})
        plot_files = write_plots(paths, fitted.history, report)
        for f in plot_files:
            mlflow.log_artifact(str(f), "plots")
        mlflow.log_dict(best, "best_params.json")
        model_uri = tracking.log_classifier(model, name="model", input_example=test.x[:5].astype(np.float32))

    with rio.atomic_path(paths.models / "model.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    rio.write_json(
        paths.models / "run.json",
        {
            "run_id": run.info.run_id,
            "model_uri": model_uri,
            "experiment_id": experiment_id,
            "spec": spec,
            "tracking_uri": mlflow.get_tracking_uri(),
        },
    )
    seconds = time.perf_counter() - start
    summary = {
        "val_accuracy": val_scores.get("accuracy"),
        "test": {k: report[k] for k in ("accuracy", "error", "n", "worst_rotated_accuracy", "per_angle", "per_class")},
        "epochs": hp.epochs,
        "train_images": len(train),
        "images_per_second": float(np.mean([m["images_per_second"] for m in fitted.history])),
        **lat,
        "seconds": seconds,
    }
    rio.write_json(paths.metrics / "train.json", _round(summary))
    log.info(
        "test accuracy %.4f (upright %.4f, worst rotation %.4f) in %.0f s; model %s",
        report["accuracy"],
        report["per_angle"].get("0", {}).get("accuracy", float("nan")),
        report["worst_rotated_accuracy"] or float("nan"),
        seconds,
        model_uri,
    )
