"""The pipeline's figures as PNG files (for people, MLflow artifacts and `dvc plots`); one function per figure.

Figures are drawn on `matplotlib.figure.Figure` objects, never pyplot's global state, so they are
thread-safe and need no backend; each is written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

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


# ---- the drift story (stage `curriculum`) --------------------------------------------------------------


def _phase_boundaries(ax, phases: list[int], labels: list[str]) -> None:
    """Dotted lines between phases and each phase's label on top (x = the round's position)."""
    starts = [i for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]]
    for s in starts[1:]:
        ax.axvline(s - 0.5, color="grey", ls=":", lw=1)
    ends = [*starts[1:], len(phases)]
    for s, e, label in zip(starts, ends, labels, strict=True):
        ax.text((s + e - 1) / 2, 1.01, label, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=7)


def plot_accuracy_matrix(
    matrix: np.ndarray, round_labels: list[str], angles: list[int], path: str | Path, arrived: np.ndarray
) -> Path:
    """Heatmap of holdout accuracy, rounds x angles, values written in; cells of angles not arrived yet hatched."""
    fig = Figure(figsize=(1.2 + 0.75 * len(angles), 1.0 + 0.32 * len(round_labels)))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="RdYlGn", vmin=max(0.0, min(0.9, float(matrix.min()))), vmax=1.0, aspect="auto")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, f"{100 * v:.1f}", ha="center", va="center", fontsize=6.5)
        if not arrived[i, j]:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", lw=0))
    ax.set_xticks(range(len(angles)), [f"{a}°" for a in angles])
    ax.set_yticks(range(len(round_labels)), round_labels, fontsize=7)
    ax.set(xlabel="holdout angle (hatched: not arrived yet)", ylabel="round")
    ax.set_title("Holdout accuracy (%) after each round", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04)
    return save_png(fig, path)


def plot_monitor_rounds(rows: list[dict], phase_labels: list[str], path: str | Path) -> Path:
    """The monitor's error on the mix per round against its threshold; drift flags marked, phases separated."""
    fig = Figure(figsize=(max(6.0, 0.35 * len(rows) + 2), 4))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    error = np.array([r["monitor_error"] for r in rows])
    drift = np.array([bool(r["drift"]) for r in rows])
    ax.plot(x, error, color="tab:blue", lw=1, label="monitor error on the mix")
    ax.scatter(x[drift], error[drift], color="tab:red", marker="x", zorder=3, label="drift flagged")
    ax.scatter(x[~drift], error[~drift], color="tab:green", marker="o", zorder=3, label="satisfied")
    ax.step(x, [r["threshold"] for r in rows], where="mid", color="black", ls="--", lw=1, label="threshold")
    ax.set_yscale("log")
    ax.set_xticks(x, [str(r["step"]) for r in rows], fontsize=7)
    ax.set(xlabel="round", ylabel="error (log scale)")
    _phase_boundaries(ax, [r["phase"] for r in rows], phase_labels)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=4, fontsize=8)
    return save_png(fig, path)


def plot_train_sizes(rows: list[dict], angles: list[int], phase_labels: list[str], path: str | Path) -> Path:
    """Stacked bars: the images per angle of the set each round's model was trained on."""
    fig = Figure(figsize=(max(6.0, 0.35 * len(rows) + 2), 4))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    bottom = np.zeros(len(rows))
    colours = matplotlib.colormaps["coolwarm"](np.linspace(0, 1, len(angles)))
    for angle, colour in zip(sorted(angles), colours, strict=True):
        counts = np.array([r[f"train_{angle}"] for r in rows], dtype=float)
        ax.bar(x, counts, bottom=bottom, color=colour, label=f"{angle}°")
        bottom += counts
    ax.set_xticks(x, [str(r["step"]) for r in rows], fontsize=7)
    ax.set(xlabel="round", ylabel="training images")
    _phase_boundaries(ax, [r["phase"] for r in rows], phase_labels)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=len(angles), fontsize=8)
    return save_png(fig, path)
