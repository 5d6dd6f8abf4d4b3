"""Input drift: recent inputs against a reference sample, feature by feature, and a verdict. No labels needed.

Unlike the gate's concept drift (holdout check, `learning.gate`), which is the model's error on labelled
digits, input drift only says that what comes in has moved.

Each feature (the estimated tilt, ink mass, bounding-box size, the model's top probability) is compared
two ways: the two-sample Kolmogorov-Smirnov test and the population stability index (PSI) over
quantile bins of the reference. A feature drifted when both say so (PSI above `drift.psi_threshold`
and p below `drift.p_value`).

The verdict tells a move outside what the model was trained on from a move within it. By definition
10 % of the reference's tilts lie outside its central 90 %. An input stream is `harmful` when its
share out there exceeds those 10 % by more than `drift.outside_share` (its digits lean beyond the
trained angles), or when the top probability drifted down (the model is less sure). A stream that
drifted with no more of its tilts out there, such as upright digits only, is `narrower`: different
from training, not a risk to accuracy. Otherwise `ok`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rotmnist.config import DriftConfig

FEATURES = ("tilt_degrees", "ink_mass", "bbox_area", "top_probability")
RANGE_QUANTILES = (0.05, 0.95)  # the reference's central 90 %
EXPECTED_OUTSIDE = 1 - (RANGE_QUANTILES[1] - RANGE_QUANTILES[0])  # the reference's own share outside it
OK, NARROWER, HARMFUL = "ok", "narrower", "harmful"


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's comparison."""

    psi: float
    ks_statistic: float
    p_value: float
    reference_mean: float
    recent_mean: float
    outside_share: float  # of recent values outside the reference's central 90 %
    drifted: bool

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def psi(reference: np.ndarray, recent: np.ndarray, bins: int) -> float:
    """Population stability index of `recent` against `reference`, over `bins` quantile bins of the reference.

    Empty bins get a small floor (1e-4) so the index stays finite; 0 means the same distribution, above
    0.2 is a common "shifted" mark.
    """
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1)
    actual = np.bincount(np.searchsorted(edges, recent, side="right"), minlength=len(edges) + 1)
    e = np.maximum(expected / max(len(reference), 1), 1e-4)
    a = np.maximum(actual / max(len(recent), 1), 1e-4)
    return float(np.sum((a - e) * np.log(a / e)))


def compare_feature(reference: np.ndarray, recent: np.ndarray, cfg: DriftConfig) -> FeatureDrift:
    """KS test, PSI and the share of recent values outside the reference's central 90 %."""
    from scipy.stats import ks_2samp

    reference, recent = np.asarray(reference, np.float64), np.asarray(recent, np.float64)
    if len(reference) == 0 or len(recent) == 0:
        raise ValueError(f"cannot compare: {len(reference)} reference and {len(recent)} recent values")
    ks = ks_2samp(reference, recent)
    index = psi(reference, recent, cfg.bins)
    low, high = np.quantile(reference, RANGE_QUANTILES)
    outside = float(np.mean((recent < low) | (recent > high)))
    drifted = index > cfg.psi_threshold and float(ks.pvalue) < cfg.p_value
    return FeatureDrift(
        psi=index,
        ks_statistic=float(ks.statistic),
        p_value=float(ks.pvalue),
        reference_mean=float(reference.mean()),
        recent_mean=float(recent.mean()),
        outside_share=outside,
        drifted=drifted,
    )


def verdict(features: dict[str, FeatureDrift], cfg: DriftConfig) -> str:
    """`harmful`, `narrower` or `ok` (see the module's docstring)."""
    tilt, top = features.get("tilt_degrees"), features.get("top_probability")
    if tilt is not None and tilt.drifted and tilt.outside_share - EXPECTED_OUTSIDE > cfg.outside_share:
        return HARMFUL
    if top is not None and top.drifted and top.recent_mean < top.reference_mean:
        return HARMFUL
    return NARROWER if any(f.drifted for f in features.values()) else OK


def compare(reference: dict[str, np.ndarray], recent: dict[str, np.ndarray], cfg: DriftConfig) -> dict[str, Any]:
    """Every feature both sides have, compared; with the verdict. No nulls or lists: a DVC metrics file as is."""
    names = [f for f in FEATURES if f in reference and f in recent]
    if not names:
        raise ValueError(f"no feature to compare: expected some of {FEATURES}")
    features = {name: compare_feature(reference[name], recent[name], cfg) for name in names}
    return {
        "verdict": verdict(features, cfg),
        "drifted": ", ".join(name for name, f in features.items() if f.drifted),  # "" when none
        "reference_images": len(reference[names[0]]),
        "recent_images": len(recent[names[0]]),
        "features": {name: f.as_dict() for name, f in features.items()},
        "thresholds": {"psi": cfg.psi_threshold, "p_value": cfg.p_value, "outside_share": cfg.outside_share},
    }


LABELS = {
    "tilt_degrees": "estimated tilt (degrees)",
    "ink_mass": "ink mass",
    "bbox_area": "bounding box (pixels)",
    "top_probability": "top probability",
}


def plot_input_drift(
    reference: dict[str, np.ndarray], recent: dict[str, np.ndarray], report: dict[str, Any], path
) -> None:
    """One panel per compared feature: the reference's and the recent inputs' distributions, PSI and verdict."""
    from matplotlib.figure import Figure

    from rotmnist.learning.plots import save_png

    names = list(report["features"])
    fig = Figure(figsize=(4.2 * len(names), 3.4))
    for ax, name in zip(fig.subplots(1, len(names), squeeze=False)[0], names, strict=True):
        both = np.concatenate([reference[name], recent[name]])
        bins = np.linspace(float(both.min()), float(both.max()) + 1e-9, 40)
        ax.hist(reference[name], bins=bins, density=True, alpha=0.55, label="reference (train)")
        ax.hist(recent[name], bins=bins, density=True, alpha=0.55, label="recent requests")
        f = report["features"][name]
        ax.set_title(f"PSI {f['psi']:.2f}{' drifted' if f['drifted'] else ''}", fontsize=10)
        ax.set_xlabel(LABELS.get(name, name))
    fig.axes[0].legend(fontsize=8)
    fig.suptitle(f"input drift: {report['verdict']} ({report['recent_images']} recent inputs)")
    save_png(fig, path)
