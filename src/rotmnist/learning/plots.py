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
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import PercentFormatter

from rotmnist.data.dataset import Dataset
from rotmnist.io import atomic_path
from rotmnist.learning.metrics import ROC_LOG_FLOOR, auc, confusion_matrix, sample_curve
from rotmnist.spec import ALLOWED_ANGLES, IMAGE_SHAPE, N_CLASSES

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


def angle_accuracy_figure(
    rows: list[dict], gate_line: float, labels: tuple[str, str] = ("candidate", "champion")
) -> Figure:
    """Bars of holdout accuracy per angle (candidate, and champion where `rows` has one), with the gate's line.

    A lone candidate's bars sit centred on their angle. The axis is zoomed to the data (accuracies near 1
    differ in the third digit), so each bar carries its value.
    """
    fig = Figure(figsize=(10, 4.5))
    ax = fig.add_subplot()
    pos = np.arange(len(rows))
    series = [(labels[0], [r["candidate"] for r in rows])]
    if any(r["champion"] != "" for r in rows):
        series.append((labels[1], [r["champion"] for r in rows]))
    width = 0.8 / len(series)
    for k, (label, values) in enumerate(series):
        drawn = [(p, v) for p, v in zip(pos, values, strict=True) if v != ""]  # a champion may lack an angle
        x = [p + (k - (len(series) - 1) / 2) * width for p, _ in drawn]
        bars = ax.bar(x, [v for _, v in drawn], width, label=label)
        ax.bar_label(bars, [f"{v:.2%}" for _, v in drawn], fontsize=7 if len(series) == 1 else 6.5, padding=2)
    ax.axhline(gate_line, color="red", ls="--", lw=1, label=f"gate: {gate_line:.1%} (1 - angle_threshold)")
    ax.set_xticks(pos, [f"{r['angle']}°" for r in rows])
    low = min([v for _, values in series for v in values if v != ""] + [gate_line])
    bottom = max(0.0, low - 0.1 * (1 - low) - 0.005)
    ax.set_ylim(bottom, 1.0 + 0.08 * (1 - low) + 0.002)  # room above for the labels
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    ylabel = "holdout accuracy" + (f" (axis from {bottom:.1%})" if bottom > 0 else "")
    ax.set(xlabel="rotation", ylabel=ylabel, title="Holdout accuracy per angle")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, fontsize=8)
    return fig


def plot_angle_accuracy(
    rows: list[dict], path: str | Path, gate_line: float, labels: tuple[str, str] = ("candidate", "champion")
) -> Path:
    """The per-angle bars of `angle_accuracy_figure` as a PNG, written atomically."""
    return save_png(angle_accuracy_figure(rows, gate_line, labels), path)


def plot_confusion(y: np.ndarray, yhat: np.ndarray, path: str | Path) -> Path:
    """The confusion matrix (log-scaled colours, counts written in)."""
    cm = confusion_matrix(y, yhat)
    fig = Figure(figsize=(6, 5.5))
    ax = fig.add_subplot()
    shade = np.log1p(cm) / max(np.log1p(cm).max(), 1e-9)  # 0..1, so dark cells get white text
    ax.imshow(shade, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(cm):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if shade[i, j] > 0.5 else "black")
    ax.set(xticks=range(N_CLASSES), yticks=range(N_CLASSES), xlabel="predicted", ylabel="actual")
    ax.set_title(f"Holdout confusion matrix ({len(yhat)} images; colour: log count)")
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


def plot_circle(rows: list[dict], path: str | Path, gate_line: float) -> Path:
    """Test and holdout accuracy per angle across the circle (`circle.csv`'s rows), the trained angles shaded."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    angles = [r["angle"] for r in rows]
    for key, marker in (("test_accuracy", "o"), ("holdout_accuracy", "s")):
        ax.plot(angles, [100 * r[key] for r in rows], marker=marker, ms=4, label=key.split("_")[0])
    ax.axvspan(min(ALLOWED_ANGLES), max(ALLOWED_ANGLES), color="grey", alpha=0.12, label="trained angles")
    ax.axhline(100 * gate_line, color="grey", ls=":", lw=1, label="the gate's per-angle line")
    ax.set(xlabel="angle (degrees, counter-clockwise)", ylabel="accuracy (%)", xticks=angles)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower center", fontsize=8)
    ax.set_title("Upright test and holdout digits turned across the circle")
    return save_png(fig, path)


def plot_roc(curves: dict[int, tuple[np.ndarray, np.ndarray]], path: str | Path) -> Path:
    """One-vs-rest ROC curve of each class, AUC in the legend: linear axes, and a zoom on the top-left corner beside it.

    The zoom (false positive rate on a log axis, true positive rate from just below the lowest curve at
    0.1 %) shows where good classifiers differ, which the linear panel squeezes into its corner.
    """
    fig = Figure(figsize=(11, 5))
    linear, zoom = fig.subplots(1, 2)
    colours = matplotlib.colormaps["tab10"]
    for c, (fpr, tpr) in sorted(curves.items()):
        label = f"{c}: AUC {auc(fpr, tpr):.5f}"
        linear.plot(fpr, tpr, lw=1.2, color=colours(c % 10), label=label)
        zoom.plot(np.maximum(fpr, ROC_LOG_FLOOR), tpr, lw=1.2, color=colours(c % 10))  # fpr 0 at the left edge
    linear.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="chance")
    linear.set(xlim=(0, 1), ylim=(0, 1.01), title="linear axes", ylabel="true positive rate")
    at_corner = [float(sample_curve(fpr, tpr, [1e-3])[0]) for fpr, tpr in curves.values()]
    bottom = max(0.0, min(at_corner, default=0.0) - 0.02)
    zoom.set_xscale("log")
    zoom.set(xlim=(ROC_LOG_FLOOR, 1), ylim=(bottom, 1.0 + 0.02 * (1 - bottom)), title="top-left corner, log axis")
    zoom.set_ylabel("true positive rate" + (f" (axis from {bottom:.1%})" if bottom > 0 else ""))
    for ax in (linear, zoom):
        ax.set_xlabel("false positive rate")
        ax.grid(alpha=0.3)
    linear.legend(title="digit vs rest", loc="lower right", fontsize=7, title_fontsize=8)
    fig.suptitle(f"Holdout ROC curves, one digit against the rest ({len(curves)} classes)", fontsize=11)
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


def _rounds_figure(rows: list[dict]) -> tuple[Figure, Axes, np.ndarray]:
    """A figure wide enough for one position per round, its axes, and the rounds' x positions."""
    fig = Figure(figsize=(max(6.0, 0.35 * len(rows) + 2), 4))
    return fig, fig.add_subplot(), np.arange(len(rows))


def _label_rounds(ax: Axes, rows: list[dict], phase_labels: list[str], ylabel: str, legend_columns: int) -> None:
    """Round numbers on x, the phases marked on top, the legend below."""
    ax.set_xticks(range(len(rows)), [str(r["step"]) for r in rows], fontsize=7)
    ax.set(xlabel="round", ylabel=ylabel)
    _phase_boundaries(ax, [r["phase"] for r in rows], phase_labels)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=legend_columns, fontsize=8)


def plot_monitor_rounds(rows: list[dict], phase_labels: list[str], path: str | Path) -> Path:
    """The monitor's error on the mix per round against its threshold; drift flags marked, phases separated."""
    fig, ax, x = _rounds_figure(rows)
    error = np.array([r["monitor_error"] for r in rows])
    drift = np.array([bool(r["drift"]) for r in rows])
    ax.plot(x, error, color="tab:blue", lw=1, label="monitor error on the mix")
    ax.scatter(x[drift], error[drift], color="tab:red", marker="x", zorder=3, label="drift flagged")
    ax.scatter(x[~drift], error[~drift], color="tab:green", marker="o", zorder=3, label="satisfied")
    ax.step(x, [r["threshold"] for r in rows], where="mid", color="black", ls="--", lw=1, label="threshold")
    ax.set_yscale("log")
    _label_rounds(ax, rows, phase_labels, "error (log scale)", legend_columns=4)
    return save_png(fig, path)


def plot_train_sizes(rows: list[dict], angles: list[int], phase_labels: list[str], path: str | Path) -> Path:
    """Stacked bars: the images per angle of the set each round's model was trained on."""
    fig, ax, x = _rounds_figure(rows)
    bottom = np.zeros(len(rows))
    colours = matplotlib.colormaps["coolwarm"](np.linspace(0, 1, len(angles)))
    for angle, colour in zip(sorted(angles), colours, strict=True):
        counts = np.array([r[f"train_{angle}"] for r in rows], dtype=float)
        ax.bar(x, counts, bottom=bottom, color=colour, label=f"{angle}°")
        bottom += counts
    _label_rounds(ax, rows, phase_labels, "training images", legend_columns=len(angles))
    return save_png(fig, path)
