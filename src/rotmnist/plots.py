"""The pipeline's figures as PNG files (for people, MLflow artifacts and `dvc plots`); one function per figure.

Figures are drawn on `matplotlib.figure.Figure` objects, never pyplot's global state, so they are
thread-safe and need no backend; each is written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure

from rotmnist.io import IMAGE_SHAPE, N_CLASSES, Dataset, atomic_path
from rotmnist.metrics import confusion_matrix

MAX_MISCLASSIFIED = 48  # digits shown in the grid of holdout mistakes


def save_png(fig: Figure, path: str | Path, dpi: float | None = 100) -> Path:
    """Lay out `fig` and write it as a PNG, atomically."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **({"dpi": dpi} if dpi else {}))
    return Path(path)


def plot_samples(ds: Dataset, path: str | Path, per_class: int) -> None:
    """A PNG grid of the first `per_class` images of each digit (one row per class), written atomically."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    pad, (h, w) = 2, IMAGE_SHAPE
    grid = np.full((N_CLASSES * (h + pad) + pad, per_class * (w + pad) + pad), np.nan)
    for digit in range(N_CLASSES):
        for col, i in enumerate(np.flatnonzero(ds.y == digit)[:per_class]):
            top, left = pad + digit * (h + pad), pad + col * (w + pad)
            grid[top : top + h, left : left + w] = ds.x[i]
    fig = Figure(figsize=(1 + 0.45 * per_class, 5.5), dpi=100)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")
    ax.imshow(grid, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
    ax.set_yticks([pad + d * (h + pad) + h / 2 for d in range(N_CLASSES)], [str(d) for d in range(N_CLASSES)])
    ax.set_xticks([])
    ax.set_ylabel("label")
    ax.set_title(f"First {per_class} images of each digit", fontsize=10)
    save_png(fig, path, dpi=None)


def plot_angle_accuracy(
    rows: list[dict], path: str | Path, gate_line: float, labels: tuple[str, str] = ("candidate", "champion")
) -> Path:
    """Bars of holdout accuracy per angle (candidate, and champion where `rows` has one), with the gate's line."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    pos = np.arange(len(rows))
    has_champion = any(r["champion"] != "" for r in rows)
    ax.bar(pos - 0.2, [r["candidate"] for r in rows], 0.4, label=labels[0])
    if has_champion:
        ax.bar(pos + 0.2, [r["champion"] or 0 for r in rows], 0.4, label=labels[1])
    ax.axhline(gate_line, color="red", ls="--", lw=1, label="gate (1 - angle_threshold)")
    ax.set_xticks(pos, [f"{r['angle']}°" for r in rows])
    low = min([r["candidate"] for r in rows] + [r["champion"] for r in rows if r["champion"] != ""])
    ax.set_ylim(max(0.0, min(low, gate_line) - 0.02), 1.0)
    ax.set(xlabel="rotation", ylabel="holdout accuracy", title="Holdout accuracy per angle")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, fontsize=8)
    return save_png(fig, path)


def plot_confusion(y: np.ndarray, yhat: np.ndarray, path: str | Path) -> Path:
    """The confusion matrix (log-scaled colours, counts written in)."""
    cm = confusion_matrix(y, yhat)
    fig = Figure(figsize=(6, 5.5))
    ax = fig.add_subplot()
    ax.imshow(np.log1p(cm), cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if i == j else "black")
    ax.set(xticks=range(N_CLASSES), yticks=range(N_CLASSES), xlabel="predicted", ylabel="actual")
    ax.set_title(f"Holdout confusion matrix ({len(yhat)} images)")
    return save_png(fig, path)


def plot_misclassified(ds: Dataset, probs: np.ndarray, path: str | Path) -> Path:
    """A grid of the most confidently misclassified digits of `ds` (true -> predicted, angle, probability)."""
    yhat = probs.argmax(axis=1)
    wrong = np.flatnonzero(yhat != ds.y)
    wrong = wrong[np.argsort(-probs[wrong, yhat[wrong]], kind="stable")][:MAX_MISCLASSIFIED]  # most confident first
    cols = 8
    nrows = max(1, math.ceil(len(wrong) / cols))
    fig = Figure(figsize=(cols * 1.2, nrows * 1.4 + 0.4))
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong, strict=False):
        ax.imshow(ds.x[i], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{ds.y[i]}→{yhat[i]} {ds.angle[i]}°\np={probs[i, yhat[i]]:.2f}", fontsize=7)
    n_wrong = int((yhat != ds.y).sum())
    fig.suptitle(f"Misclassified holdout digits: {n_wrong} of {len(yhat)} (true→predicted angle)", fontsize=9)
    if not n_wrong:
        axes.flat[0].text(0, 0.5, "none", fontsize=12)
    return save_png(fig, path)


def plot_compare_angles(rows: dict[str, dict], path: str | Path, min_accuracy: float) -> Path:
    """Test accuracy per angle, one line per configuration, with the SLA's worst-angle floor."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    for name, row in rows.items():
        angles = sorted(row["angle_accuracy"], key=int)
        style = "--" if name.endswith("-upright") else "-"
        ax.plot([int(a) for a in angles], [row["angle_accuracy"][a] for a in angles], style, marker="o", label=name)
    ax.axhline(min_accuracy, color="red", ls=":", lw=1, label="SLA floor")
    ax.set(xlabel="rotation (degrees)", ylabel="test accuracy", title="Test accuracy per angle, per configuration")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return save_png(fig, path)


def plot_pareto(rows: dict[str, dict], path: str | Path, min_accuracy: float, max_latency_ms: float) -> Path:
    """Worst-angle accuracy against single-image p99 latency; the Pareto front joined, the SLA's limits."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for name, row in rows.items():
        x, y = row["latency_ms_p99"], row["worst_angle_accuracy"]
        ax.scatter(x, y, s=40, marker="o" if row["pareto"] else "x", color="C0" if row["pareto"] else "grey")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = sorted((r["latency_ms_p99"], r["worst_angle_accuracy"]) for r in rows.values() if r["pareto"])
    if front:
        ax.step(*zip(*front, strict=True), where="post", color="C0", lw=1, label="Pareto front")
    ax.axhline(min_accuracy, color="green", ls=":", lw=1, label="SLA: worst-angle accuracy")
    ax.axvline(max_latency_ms, color="red", ls=":", lw=1, label="SLA: p99 latency")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set(xlabel="single-image latency p99 (ms, log scale)", ylabel="worst-angle test accuracy")
    ax.set_title("Accuracy at the hardest angle against latency")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    return save_png(fig, path)
