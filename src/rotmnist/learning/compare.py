"""Pipeline configurations side by side: one training budget for all, accuracy per angle, latency, SLA, Pareto front.

Torch and numpy only, no MLflow: the stage `compare` logs what these functions return. A trained
configuration is a model family (`compare.specs`) × training data (`upright` digits only, or the whole
`rotated` train split); every one sees exactly `compare.train_images` images with the same recipe and seed.
"""

from __future__ import annotations

import io as bytes_io
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from rotmnist.data.dataset import Dataset
from rotmnist.data.sources import budget_rows
from rotmnist.errors import PipelineError
from rotmnist.learning.latency import measure_latency
from rotmnist.learning.metrics import slice_metrics, worst_angle
from rotmnist.learning.model import RawImageClassifier, predict_labels, serving_copy
from rotmnist.learning.recipe import Hyper
from rotmnist.learning.training import fit
from rotmnist.spec import split_configuration

if TYPE_CHECKING:
    from rotmnist.config import CompareConfig, LatencyConfig, SlaConfig

log = logging.getLogger(__name__)

UPRIGHT = 0  # the angle of the original digits


def training_pool(train: Dataset, data: str) -> Dataset:
    """The rows a configuration may train on: `upright` = angle 0 only, `rotated` = the whole train split."""
    if data not in ("upright", "rotated"):
        raise ValueError(f"training data must be 'upright' or 'rotated', got {data!r}")
    pool = train.take(train.angle == UPRIGHT) if data == "upright" else train
    if len(pool) == 0:
        raise PipelineError(f"the train split has no {data} images to train on; check the augment and split stages")
    return pool


def train_configuration(
    name: str, cfg: CompareConfig, train: Dataset, hp: Hyper, device: torch.device | str
) -> tuple[RawImageClassifier, dict[str, Any]]:
    """Train configuration `name` (e.g. `cnn-rotated`) on its budget; the CPU model and its training record."""
    family, data = split_configuration(name)
    pool = training_pool(train, data)
    rows = budget_rows(len(pool), cfg.train_images, cfg.seed)
    fitted = fit(getattr(cfg.specs, family), pool.take(rows), None, hp, device=device, seed=cfg.seed, desc=name)
    seconds = float(sum(m["epoch_seconds"] for m in fitted.history))
    record = {"train_images": len(rows), "train_seconds": seconds, "trained_by": "compare"}
    return serving_copy(fitted.model), record


def accuracy_report(model: RawImageClassifier, test: Dataset) -> dict[str, Any]:
    """Test accuracy overall, upright and at each angle, and the worst angle (upright included)."""
    report = slice_metrics(test.y, predict_labels(model, test.x), test.angle)
    per_angle = {int(a): m["accuracy"] for a, m in report["per_angle"].items()}
    if UPRIGHT not in per_angle:
        raise PipelineError("the test split has no upright images; check the augment and split stages")
    worst, worst_accuracy = worst_angle(per_angle)
    return {
        "accuracy": report["accuracy"],
        "upright_accuracy": per_angle[UPRIGHT],
        "worst_angle": worst,
        "worst_angle_accuracy": worst_accuracy,
        "angle_accuracy": {str(a): per_angle[a] for a in sorted(per_angle)},
    }


def model_size(model: torch.nn.Module) -> dict[str, int]:
    """Parameter count and the size of the saved state dict (what `models/model.pt` holds), in bytes."""
    buffer = bytes_io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return {"parameters": sum(p.numel() for p in model.parameters()), "model_bytes": buffer.tell()}


def sla_reasons(row: Mapping[str, Any], sla: SlaConfig) -> list[str]:
    """Why a configuration misses the SLA (empty if it meets it): worst-angle accuracy and single-image p99."""
    reasons = []
    if row["worst_angle_accuracy"] < sla.min_worst_angle_accuracy:
        reasons.append(
            f"worst-angle accuracy {row['worst_angle_accuracy']:.2%} at {row['worst_angle']:+d}° "
            f"< {sla.min_worst_angle_accuracy:.2%}"
        )
    if row["latency_ms_p99"] > sla.max_p99_latency_ms:
        reasons.append(f"single-image p99 {row['latency_ms_p99']:.2f} ms > {sla.max_p99_latency_ms:g} ms")
    return reasons


def sla_verdict(row: Mapping[str, Any], sla: SlaConfig) -> dict[str, Any]:
    """`sla_met` and `sla_reasons` ("none" when met) of one configuration's figures."""
    reasons = sla_reasons(row, sla)
    return {"sla_met": not reasons, "sla_reasons": "; ".join(reasons) or "none"}


def pareto_front(points: Mapping[str, tuple[float, float]]) -> set[str]:
    """Names whose (accuracy, latency) no other point beats: at least as accurate and as fast, better in one."""

    def dominated(a: tuple[float, float]) -> bool:
        return any(b[0] >= a[0] and b[1] <= a[1] and b != a for b in points.values())

    return {name for name, p in points.items() if not dominated(p)}


def mark_pareto(rows: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`rows` with `pareto` set: on the front of worst-angle accuracy (higher) against p99 latency (lower)."""
    front = pareto_front({n: (r["worst_angle_accuracy"], r["latency_ms_p99"]) for n, r in rows.items()})
    return {n: r | {"pareto": n in front} for n, r in rows.items()}


def score(model: RawImageClassifier, test: Dataset, cfg: CompareConfig, latency: LatencyConfig) -> dict[str, Any]:
    """Every figure of one configuration but its training record: accuracy, latency, size and SLA verdict."""
    row = accuracy_report(model, test) | measure_latency(model, test.x, latency) | model_size(model)
    return row | sla_verdict(row, cfg.sla)
