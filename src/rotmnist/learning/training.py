"""The training loop every model shares (sweep trials, the final model, `learn_model`): no MLflow, no Optuna.

The split stays a uint8 tensor in memory (on the GPU when there is one); each epoch draws its rows in a
seeded order (every row, or a few rotations of each source digit: `EpochRows`) and forms batches by
indexing, shifts them by a few pixels at random (vectorised), and the model normalises them inside
(`RawImageClassifier.logits`), so training and serving share one path. With `Hyper.ema` the model returned
is a moving average of the weights (`WeightAverage`).
Callers observe progress through `fit(on_epoch=...)`: the sweep reports to Optuna, the train stage to MLflow.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from rotmnist.data.dataset import FEEDBACK, Dataset
from rotmnist.errors import PipelineError, first_line
from rotmnist.learning.device import resolve_precision
from rotmnist.learning.model import RawImageClassifier, classifier_from_spec
from rotmnist.learning.recipe import Hyper
from rotmnist.spec import EVAL_BATCH, describe, normalize_spec

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

MIN_ONECYCLE_STEPS = 8
EpochCallback = Callable[[dict[str, float]], None]


@dataclass
class Fitted:
    """A trained classifier and its per-epoch history."""

    model: RawImageClassifier
    history: list[dict[str, float]] = field(default_factory=list)


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


def _tensors(ds: Dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8) and labels (int64) of `ds` as tensors on `device`."""
    return torch.from_numpy(np.ascontiguousarray(ds.x)).to(device), torch.from_numpy(ds.y.astype(np.int64)).to(device)


class EpochRows:
    """Which rows of a training set each epoch visits, in a seeded random order.

    With `per_source` = 0 every row, once. Otherwise up to `per_source` rows of each source image (its
    rotations), drawn afresh every epoch: an epoch of the rotated split then costs one image per source
    instead of seven, and over many epochs every source is still seen at every angle.
    """

    def __init__(self, source_id: np.ndarray, per_source: int):
        self.n, self.per_source = len(source_id), per_source
        if per_source:
            _, group = np.unique(source_id, return_inverse=True)
            counts = np.bincount(group)
            self.group = torch.from_numpy(group.astype(np.float64))
            self.taken = int(np.minimum(counts, per_source).sum())
        else:
            self.taken = self.n

    def __len__(self) -> int:
        return self.taken

    def draw(self, gen: torch.Generator) -> torch.Tensor:
        """This epoch's row indices (int64), shuffled."""
        if not self.per_source:
            return torch.randperm(self.n, generator=gen)
        # Sort by source, in random order within each source; keep the first `per_source` of each.
        by_source = torch.argsort(self.group + torch.rand(self.n, generator=gen, dtype=torch.float64))
        sorted_group = self.group[by_source]
        first = torch.searchsorted(sorted_group, sorted_group, side="left")
        keep = by_source[torch.arange(self.n) - first < self.per_source]
        return keep[torch.randperm(len(keep), generator=gen)]


class WeightAverage:
    """An exponential moving average of a model's weights and batch-norm statistics, updated after each step.

    The decay warms up as min(decay, (1 + t) / (10 + t)) so short runs are not dominated by the initial
    weights. The averaged copy is the model `fit` returns: it generalises better than the last step's weights.
    Not `torch.optim.swa_utils.AveragedModel`: its EMA (`get_ema_multi_avg_fn`) has no warm-up, and its first
    update copies the weights instead of averaging them, so a short run (a sweep trial) would train another model.
    """

    def __init__(self, model: RawImageClassifier, decay: float):
        self.model, self.decay, self.updates = copy.deepcopy(model), decay, 0
        floats = [(k, v) for k, v in model.state_dict().items() if v.dtype.is_floating_point]
        own = self.model.state_dict()
        self._src = [v for _, v in floats]
        self._dst = [own[k] for k, _ in floats]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        weight = 1 - min(self.decay, (1 + self.updates) / (10 + self.updates))
        for dst, src in zip(self._dst, self._src, strict=True):
            dst.lerp_(src, weight)


@dataclass
class _Step:
    """What one optimisation step needs besides the batch: the model, its optimiser and the recipe."""

    model: RawImageClassifier
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    hp: Hyper
    bf16: bool
    average: WeightAverage | None = None
    weight: torch.Tensor | None = None  # per training row: the loss weight (None: every row weighs 1)


def _train_epoch(
    step: _Step, x: torch.Tensor, y: torch.Tensor, order: torch.Tensor, gen: torch.Generator, desc: str
) -> tuple[float, int]:
    """One pass over the rows `order` of (x, y); return the summed loss and the number right."""
    hp, device = step.hp, x.device
    step.model.train()
    # Running sums stay on the device: no host sync per step (it stalls a GPU).
    total_loss, correct = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)
    order = order.to(device)
    steps = math.ceil(len(order) / hp.batch_size)
    for i in tqdm(range(steps), desc=desc, leave=False, mininterval=2, disable=None):
        idx = order[i * hp.batch_size : (i + 1) * hp.batch_size]
        xb, yb = random_shift(x[idx], hp.shift, gen), y[idx]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=step.bf16):
            logits = step.model.logits(xb)
        if step.weight is None:
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=hp.label_smoothing)
        else:  # a weighted mean over the batch's images: a weight-1 row counts as in the unweighted loss
            each = F.cross_entropy(logits.float(), yb, label_smoothing=hp.label_smoothing, reduction="none")
            loss = (each * step.weight[idx]).mean()
        step.opt.zero_grad(set_to_none=True)
        loss.backward()
        step.opt.step()
        step.sched.step()
        if step.average is not None:
            step.average.update()
        total_loss += loss.detach() * len(idx)
        correct += (logits.detach().argmax(1) == yb).sum()
    return float(total_loss), int(correct)


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """torch's global RNG seeded with `seed` inside the block; the caller's state restored after it.

    The state of the CPU and, training on a GPU, of every GPU that `torch.manual_seed` reaches.
    """
    cuda = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


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
    init: RawImageClassifier | Mapping[str, torch.Tensor] | None = None,
    score_every: int = 1,
) -> Fitted:
    """Train a model of `spec` on `train`; after each epoch call `on_epoch(metrics)`.

    `val` is scored every `score_every` epochs and after the last (its metrics then join that epoch's).
    Rows of `train` that are people's corrections (mnist_split FEEDBACK) weigh `hp.feedback_weight` in the loss.
    With `hp.ema` the model scored and returned is the weights' moving average (`WeightAverage`).

    The model starts fresh, or from `init` (a model of the same spec, or its state dict: a warm start that
    keeps its weights and pixel normalisation; `init` itself is not modified).
    `on_epoch` may raise (e.g. optuna.TrialPruned) to stop early. Seeded: same inputs, same model; torch's
    global RNG is left as the caller had it.
    A loss that turns NaN or infinite stops training with a PipelineError.
    """
    spec = normalize_spec(spec)
    if len(train) == 0:
        raise ValueError("the training set is empty")
    device = torch.device(device)
    with seeded_global_rng(seed, device):  # the initial weights and dropout
        model = _initial_model(spec, train, init, device)
        x, y = _tensors(train, device)
        xv, yv = _tensors(val, device) if val is not None and len(val) else (None, None)
        rows = EpochRows(train.source_id, hp.rotations_per_epoch)
        opt, sched = _optimizer(model, hp, hp.epochs * math.ceil(len(rows) / hp.batch_size))
        average = WeightAverage(model, hp.ema) if hp.ema else None
        bf16 = resolve_precision(hp.precision, device) == "bf16"
        step = _Step(model, opt, sched, hp, bf16=bf16, average=average, weight=row_weights(train, hp, device))
        result = average.model if average else model  # what is scored and returned
        gen = torch.Generator().manual_seed(seed)
        history: list[dict[str, float]] = []
        for epoch in range(1, hp.epochs + 1):
            start = time.perf_counter()
            order = rows.draw(gen)
            total_loss, correct = _train_epoch(step, x, y, order, gen, f"{desc} epoch {epoch}/{hp.epochs}")
            if not math.isfinite(total_loss):
                raise PipelineError(f"training diverged (loss {total_loss}) at epoch {epoch}; lower the learning rate")
            metrics = _epoch_metrics(epoch, total_loss, correct, len(order), sched, time.perf_counter() - start)
            if xv is not None and (epoch % score_every == 0 or epoch == hp.epochs):
                scores = evaluate(result, xv, yv)
                metrics |= {"val_loss": scores["loss"], "val_accuracy": scores["accuracy"]}
            log.info("%s epoch %d/%d: %s", desc, epoch, hp.epochs, _fmt(metrics))
            history.append(metrics)
            if on_epoch is not None:
                on_epoch(metrics)
        result.eval()
    return Fitted(model=result, history=history)


def row_weights(train: Dataset, hp: Hyper, device: torch.device) -> torch.Tensor | None:
    """The loss weight of each training row: `hp.feedback_weight` for people's corrections, 1 for the rest.

    None (the plain mean loss) when no row is a correction or the weight is 1: the same model as before.
    """
    is_feedback = train.mnist_split == FEEDBACK
    if hp.feedback_weight == 1.0 or not is_feedback.any():
        return None
    return torch.from_numpy(np.where(is_feedback, hp.feedback_weight, 1.0).astype(np.float32)).to(device)


def _epoch_metrics(epoch: int, total_loss: float, correct: int, n: int, sched, seconds: float) -> dict[str, float]:
    """What an epoch reports: mean loss and accuracy over its `n` images, the learning rate, its speed."""
    return {
        "epoch": epoch,
        "train_loss": total_loss / n,
        "train_accuracy": correct / n,
        "lr": sched.get_last_lr()[0],
        "epoch_seconds": seconds,
        "epoch_images": n,
        "images_per_second": n / seconds,
    }


def _initial_model(
    spec: Mapping[str, Any], train: Dataset, init: RawImageClassifier | Mapping[str, torch.Tensor] | None, device
) -> RawImageClassifier:
    """A fresh model normalised to `train`'s pixels, or a copy of `init`'s weights; on `device`."""
    if init is None:
        model = classifier_from_spec(spec, *pixel_stats(train.x))
    else:  # the normalisation comes with init's weights
        model = classifier_from_spec(spec)
        _warm_start(model, init, spec)
    model = model.to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model


def _warm_start(
    model: RawImageClassifier, init: RawImageClassifier | Mapping[str, torch.Tensor], spec: Mapping[str, Any]
) -> None:
    """Copy the weights and normalisation of `init` into `model`; a PipelineError if the layouts differ."""
    state = init.state_dict() if isinstance(init, torch.nn.Module) else init
    try:
        model.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
    except (RuntimeError, AttributeError) as err:
        first = first_line(err, limit=None)
        raise PipelineError(f"cannot warm-start a {describe(spec)} model from the given one: {first}") from None


def _fmt(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "epoch")
