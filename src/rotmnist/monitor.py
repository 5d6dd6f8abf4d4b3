"""Stage `monitor`: the held-out drift check, registration, and gated promotion to `champion`.

The candidate from `train` is registered as a new version of `monitor.model_name` (alias `candidate`),
scored on the holdout split (overall, per angle, per class) and, with the current champion
re-scored on the same images, moved to alias `champion` only if the gate passes. A failed gate is a
normal outcome: the stage succeeds, reports why, and the champion stays where it was.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rotmnist import io, registry
from rotmnist.errors import PipelineError
from rotmnist.io import N_CLASSES
from rotmnist.metrics import confusion_matrix, error_rate, slice_metrics

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from rotmnist.config import Config, MonitorConfig
    from rotmnist.paths import Paths

log = logging.getLogger(__name__)

MAX_MISCLASSIFIED = 48  # digits shown in the grid of holdout mistakes
TAG_VALUE_MAX = 5000  # MLflow's limit on a model version tag value


# ---- the assignment's drift check -----------------------------------------------------------------


def is_drift(error: float, threshold: float) -> bool:
    """The drift rule used everywhere: an error strictly above its threshold."""
    return error > threshold


def _check_threshold(threshold: Any, name: str = "threshold") -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(threshold).__name__} {threshold!r}")
    if not (0.0 <= float(threshold) <= 1.0):
        raise ValueError(f"{name} must be within [0, 1] (an error rate), got {threshold!r}")
    return float(threshold)


def monitor_perf(model, ground_truth_dataset, threshold):
    """Return True ("drift") when the model's misclassification rate on the ground truth exceeds `threshold`.

    `model` needs `.predict(x) -> labels`; `ground_truth_dataset` needs `.x` (images) and `.y` (labels),
    as `rotmnist.io.Dataset` has; `threshold` is an error rate in [0, 1].
    """
    threshold = _check_threshold(threshold)
    if not callable(getattr(model, "predict", None)):
        raise TypeError(f"model must have a predict(x) method returning labels, got {type(model).__name__}")
    if not (hasattr(ground_truth_dataset, "x") and hasattr(ground_truth_dataset, "y")):
        raise TypeError(f"ground_truth_dataset must have .x and .y, got {type(ground_truth_dataset).__name__}")
    x, y = np.asarray(ground_truth_dataset.x), np.asarray(ground_truth_dataset.y)
    if y.ndim != 1:
        raise ValueError(f"ground_truth_dataset.y must be one-dimensional, got shape {y.shape}")
    if len(y) == 0:
        raise ValueError("ground_truth_dataset is empty: the drift check needs at least one labelled image")
    if len(x) != len(y):
        raise ValueError(f"ground_truth_dataset has {len(x)} images but {len(y)} labels")
    yhat = np.asarray(model.predict(x))
    if yhat.shape != y.shape:
        raise ValueError(
            f"model.predict returned shape {yhat.shape} for {len(y)} images; expected one label per image {y.shape}"
        )
    error = error_rate(y, yhat)
    log.debug("monitor_perf: error %.4f vs threshold %.4f", error, threshold)
    return is_drift(error, threshold)


# ---- sliced evaluation and the gate ---------------------------------------------------------------


def drift_reasons(metrics: dict[str, Any], threshold: float, angle_threshold: float) -> list[str]:
    """Why the holdout metrics count as drift: the overall error or any angle's error above its threshold."""
    reasons = []
    if is_drift(metrics["error"], threshold):
        reasons.append(f"holdout error {metrics['error']:.2%} > monitor.threshold {threshold:.2%}")
    for angle, m in metrics["per_angle"].items():
        if is_drift(m["error"], angle_threshold):
            reasons.append(f"error at {angle} deg {m['error']:.2%} > monitor.angle_threshold {angle_threshold:.2%}")
    return reasons


def regression_reasons(
    candidate: dict[str, Any], champion: dict[str, Any], tolerance: float, champion_label: str = "the champion"
) -> list[str]:
    """Slices (overall, each angle) where the candidate's accuracy is below the champion's by more than `tolerance`."""
    slices = [("overall", candidate, champion)]
    slices += [
        (f"at {a} deg", candidate["per_angle"][a], champion["per_angle"][a])
        for a in candidate["per_angle"]
        if a in champion["per_angle"]
    ]
    reasons = []
    for label, cand, champ in slices:
        drop = champ["accuracy"] - cand["accuracy"]
        if drop > tolerance + 1e-12:
            reasons.append(
                f"accuracy {label} {cand['accuracy']:.2%} is {drop:.2%} below {champion_label} "
                f"({champ['accuracy']:.2%}), beyond monitor.tolerance {tolerance:.2%}"
            )
    return reasons


@dataclass(frozen=True)
class Gate:
    """The promotion decision: drift flag, whether the candidate becomes champion, and why not."""

    drift: bool
    promoted: bool
    reasons: tuple[str, ...]

    @property
    def decision(self) -> str:
        return registry.GATE_PASSED if self.promoted else registry.GATE_FAILED


def decide(
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    cfg: MonitorConfig,
    champion_label: str = "the champion",
) -> Gate:
    """Pass only with no drift and, if there is a champion, no slice worse than it beyond the tolerance."""
    drift = drift_reasons(candidate, cfg.threshold, cfg.angle_threshold)
    worse = regression_reasons(candidate, champion, cfg.tolerance, champion_label) if champion else []
    return Gate(drift=bool(drift), promoted=not drift and not worse, reasons=tuple(drift + worse))


def class_distribution(y: np.ndarray, yhat: np.ndarray, n_classes: int = N_CLASSES) -> dict[str, Any]:
    """Chi-square test of the predicted class counts against the true label counts (information only)."""
    from scipy.stats import chisquare

    observed = np.bincount(np.asarray(yhat, np.int64), minlength=n_classes)[:n_classes]
    expected = np.bincount(np.asarray(y, np.int64), minlength=n_classes)[:n_classes]
    present = expected > 0
    # counts as {class: n}, not lists: DVC metrics cannot show lists
    out: dict[str, Any] = {
        "predicted": {str(c): int(n) for c, n in enumerate(observed)},
        "actual": {str(c): int(n) for c, n in enumerate(expected)},
    }
    if observed[~present].sum() > 0:  # predictions of a class absent from the labels: infinitely unlikely
        return out | {"chi2": None, "p_value": 0.0, "dof": int(present.sum()) - 1}
    if present.sum() < 2:
        return out | {"chi2": 0.0, "p_value": None, "dof": 0}
    res = chisquare(observed[present], expected[present])
    return out | {"chi2": float(res.statistic), "p_value": float(res.pvalue), "dof": int(present.sum()) - 1}


# ---- plots ----------------------------------------------------------------------------------------


def angle_rows(candidate: dict[str, Any], champion: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per-angle accuracy of candidate and champion (blank without one), sorted by angle: the DVC plot's data."""
    rows = []
    for a in sorted(candidate["per_angle"], key=int):
        champ = champion["per_angle"].get(a) if champion else None
        rows.append(
            {
                "angle": int(a),
                "candidate": round(candidate["per_angle"][a]["accuracy"], 6),
                "champion": round(champ["accuracy"], 6) if champ else "",
            }
        )
    return rows


def write_plots(
    folder: Path,
    holdout: io.Dataset,
    probs: np.ndarray,
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    cfg: MonitorConfig,
    labels: tuple[str, str] = ("candidate", "champion"),
) -> list[Path]:
    """Write the monitor's plots (CSV for `dvc plots`, PNG for people and MLflow); return the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yhat = probs.argmax(axis=1)
    written = []

    rows = angle_rows(candidate, champion)
    io.write_csv(folder / "angle_accuracy.csv", rows)
    fig, ax = plt.subplots(figsize=(7, 4))
    pos = np.arange(len(rows))
    ax.bar(pos - 0.2, [r["candidate"] for r in rows], 0.4, label=labels[0])
    if champion:
        ax.bar(pos + 0.2, [r["champion"] or 0 for r in rows], 0.4, label=labels[1])
    ax.axhline(1 - cfg.angle_threshold, color="red", ls="--", lw=1, label="gate (1 - angle_threshold)")
    ax.set_xticks(pos, [f"{r['angle']}°" for r in rows])
    low = min([r["candidate"] for r in rows] + [r["champion"] for r in rows if r["champion"] != ""])
    ax.set_ylim(max(0.0, min(low, 1 - cfg.angle_threshold) - 0.02), 1.0)
    ax.set(xlabel="rotation", ylabel="holdout accuracy", title="Holdout accuracy per angle")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, fontsize=8)
    written += [folder / "angle_accuracy.csv", _save(fig, folder / "angle_accuracy.png")]

    pairs = zip(holdout.y.tolist(), yhat.tolist(), strict=True)
    io.write_csv(folder / "confusion.csv", [{"actual": a, "predicted": p} for a, p in pairs])
    cm = confusion_matrix(holdout.y, yhat)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.imshow(np.log1p(cm), cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if i == j else "black")
    ax.set(xticks=range(N_CLASSES), yticks=range(N_CLASSES), xlabel="predicted", ylabel="actual")
    ax.set_title(f"Holdout confusion matrix ({len(yhat)} images)")
    written += [folder / "confusion.csv", _save(fig, folder / "confusion.png")]

    wrong = np.flatnonzero(yhat != holdout.y)
    wrong = wrong[np.argsort(-probs[wrong, yhat[wrong]], kind="stable")][:MAX_MISCLASSIFIED]  # most confident first
    cols = 8
    nrows = max(1, math.ceil(len(wrong) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(cols * 1.2, nrows * 1.4 + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong, strict=False):
        ax.imshow(holdout.x[i], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{holdout.y[i]}→{yhat[i]} {holdout.angle[i]}°\np={probs[i, yhat[i]]:.2f}", fontsize=7)
    n_wrong = int((yhat != holdout.y).sum())
    fig.suptitle(f"Misclassified holdout digits: {n_wrong} of {len(yhat)} (true→predicted angle)", fontsize=9)
    if not n_wrong:
        axes.flat[0].text(0, 0.5, "none", fontsize=12)
    written.append(_save(fig, folder / "misclassified.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


# ---- the stage ------------------------------------------------------------------------------------


def read_run_reference(path: Path) -> dict[str, Any]:
    """`models/run.json` written by `train`: at least the training run id and the logged model's URI."""
    data = io.read_json(path, made_by="train")
    missing = [k for k in ("run_id", "model_uri") if not isinstance(data, dict) or not data.get(k)]
    if missing:
        raise PipelineError(f"{path} lacks {', '.join(missing)}; run `rotmnist train` again")
    return data


def register_candidate(client: MlflowClient, name: str, model_uri: str, run_id: str) -> ModelVersion:
    """Register `model_uri` as a new version of `name`, or reuse the version already made from it."""
    import mlflow

    registry.check_uri(model_uri)
    for v in registry.model_versions(client, name):
        if v.source == model_uri and v.run_id == run_id:
            log.info("%s is already registered as %s version %s; re-evaluating it", model_uri, name, v.version)
            return v
    return mlflow.register_model(model_uri, name, tags={"training_run_id": run_id})


def flat_metrics(report: dict[str, Any], prefix: str = "holdout") -> dict[str, float]:
    """The report's numbers as MLflow metric names (holdout_accuracy, holdout_accuracy_angle_-30, ...)."""
    h = report[prefix]
    out = {f"{prefix}_accuracy": h["accuracy"], f"{prefix}_error": h["error"]}
    out |= {f"{prefix}_accuracy_angle_{a}": m["accuracy"] for a, m in h["per_angle"].items()}
    out |= {f"{prefix}_accuracy_class_{c}": m["accuracy"] for c, m in h["per_class"].items()}
    dist = report["class_distribution"]
    if dist["chi2"] is not None:
        out[f"{prefix}_pred_chi2"] = dist["chi2"]
    if dist["p_value"] is not None:
        out[f"{prefix}_pred_chi2_pvalue"] = dist["p_value"]
    out["gate_passed"] = float(report["gate"]["passed"])
    out["gate_drift"] = float(report["gate"]["drift"])
    return out


def version_tags(report: dict[str, Any], commit: str, data_hash: str) -> dict[str, str]:
    """Model version tags: the gate's decision and reasons, holdout metrics, and lineage."""
    g, h = report["gate"], report["holdout"]
    tags = {
        registry.GATE_TAG: g["decision"],
        "gate_reasons": g["reasons"],
        "drift": str(g["drift"]).lower(),
        "compared_with": f"v{report['registry']['compared_with']}" if report["registry"]["compared_with"] else "none",
        "holdout_n": str(h["n"]),
        "holdout_accuracy": f"{h['accuracy']:.6f}",
        "holdout_error": f"{h['error']:.6f}",
        **{f"holdout_accuracy_angle_{a}": f"{m['accuracy']:.6f}" for a, m in h["per_angle"].items()},
        "threshold": str(g["threshold"]),
        "angle_threshold": str(g["angle_threshold"]),
        "tolerance": str(g["tolerance"]),
        "git_commit": commit,
        "data_hash": data_hash,
        "training_run_id": report["training_run_id"],
    }
    return {k: v[:TAG_VALUE_MAX] for k, v in tags.items()}


def evaluate_champion(
    client: MlflowClient, name: str, holdout: io.Dataset
) -> tuple[registry.Classifier | None, dict[str, Any] | None]:
    """Load the current champion from the registry (with its fallback) and score it on the holdout."""
    try:
        champion = registry.load_champion(name, client=client)
    except registry.RegistryError as err:
        log.warning("the current champion cannot be loaded (%s); judging the candidate on the thresholds alone", err)
        return None, None
    yhat = champion.predict_proba(holdout.x, progress=f"champion v{champion.version}").argmax(axis=1)
    return champion, slice_metrics(holdout.y, yhat, holdout.angle)


def build_report(
    cfg: MonitorConfig,
    gate: Gate,
    version: str,
    previous: ModelVersion | None,
    champion_version: str | None,
    run_id: str,
    metrics: dict[str, Any],
    champion_metrics: dict[str, Any] | None,
    distribution: dict[str, Any],
) -> dict[str, Any]:
    """The content of metrics/monitor.json: decision, registry state, every slice metric (no lists: DVC)."""
    before = int(previous.version) if previous else None
    return {
        "gate": {
            "decision": gate.decision,
            "passed": gate.promoted,
            "drift": gate.drift,
            "reasons": "; ".join(gate.reasons) or "none",
            "threshold": cfg.threshold,
            "angle_threshold": cfg.angle_threshold,
            "tolerance": cfg.tolerance,
        },
        "registry": {
            "model_name": cfg.model_name,
            "version": int(version),
            "champion_before": before,
            "compared_with": int(champion_version) if champion_version else None,
            "champion_after": int(version) if gate.promoted else before,
        },
        "training_run_id": run_id,
        "holdout": metrics,
        "champion_holdout": champion_metrics,
        "class_distribution": distribution,
    }


def load_candidate(client: MlflowClient, name: str, version: str, model_uri: str) -> registry.Classifier:
    """Load the just-registered version from the registry; a model that does not load is tagged failed."""
    try:
        return registry.load_model(f"models:/{name}/{version}", version)
    except Exception as err:
        client.set_model_version_tag(name, version, registry.GATE_TAG, registry.GATE_FAILED)
        client.set_model_version_tag(name, version, "gate_reasons", f"the model does not load: {err}"[:TAG_VALUE_MAX])
        raise PipelineError(f"candidate {name} version {version} ({model_uri}) does not load: {err}") from err


def log_to_training_run(client: MlflowClient, run_id: str, report: dict[str, Any], plot_dir: Path) -> None:
    """Add the holdout metrics, the decision and the plots to the run that trained the candidate."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in flat_metrics(report).items()])
    r = report["registry"]
    client.set_tag(run_id, "gate", report["gate"]["decision"])
    client.set_tag(run_id, "registered_version", f"{r['model_name']}/{r['version']}")
    client.log_dict(run_id, report, "monitor/monitor.json")
    client.log_artifacts(run_id, str(plot_dir), "monitor")


def main(config: Config, paths: Paths) -> None:
    """Score the candidate on the holdout, register it, promote it if the gate passes, write the report."""
    from mlflow import MlflowClient

    from rotmnist import tracking

    cfg, name = config.monitor, config.monitor.model_name
    run = read_run_reference(paths.models / "run.json")
    holdout = io.load_dataset(paths.split("holdout"))
    if len(holdout) == 0:
        raise PipelineError(f"the holdout split {paths.split('holdout')} is empty; check split.holdout_fraction")
    tracking.configure_mlflow(config, paths)
    client = MlflowClient()

    previous = registry.champion_version(client, name)
    v = str(register_candidate(client, name, run["model_uri"], run["run_id"]).version)
    candidate = load_candidate(client, name, v, run["model_uri"])
    log.info("scoring %s version %s on %d holdout images", name, v, len(holdout))
    probs = candidate.predict_proba(holdout.x, progress=f"candidate v{v}")
    yhat = probs.argmax(axis=1)
    metrics = slice_metrics(holdout.y, yhat, holdout.angle)

    champion, champion_metrics = None, None
    if previous is not None and str(previous.version) != v:  # re-running on the champion itself: nothing to compare
        champion, champion_metrics = evaluate_champion(client, name, holdout)
    champion_v = champion.version if champion else None
    gate = decide(metrics, champion_metrics, cfg, champion_label=f"champion v{champion_v}")
    distribution = class_distribution(holdout.y, yhat)
    report = build_report(cfg, gate, v, previous, champion_v, run["run_id"], metrics, champion_metrics, distribution)

    tags = version_tags(report, tracking.git_commit(paths), tracking.data_digest(paths, paths.splits))
    for key, value in tags.items():
        client.set_model_version_tag(name, v, key, value)
    client.set_registered_model_alias(name, registry.CANDIDATE, v)
    if gate.promoted:
        client.set_registered_model_alias(name, registry.CHAMPION, v)

    io.write_json(paths.metrics / "monitor.json", report)
    plot_dir = paths.plots / "monitor"
    write_plots(
        plot_dir, holdout, probs, metrics, champion_metrics, cfg, (f"candidate v{v}", f"champion v{champion_v}")
    )
    log_to_training_run(client, run["run_id"], report, plot_dir)
    _announce(report, gate)


def _announce(report: dict[str, Any], gate: Gate) -> None:
    r, h = report["registry"], report["holdout"]
    worst = min(h["per_angle"].items(), key=lambda kv: kv[1]["accuracy"])
    log.info(
        "holdout accuracy %.2f%% (worst angle %s deg: %.2f%%); predicted-class chi-square p = %s",
        100 * h["accuracy"],
        worst[0],
        100 * worst[1]["accuracy"],
        report["class_distribution"]["p_value"],
    )
    if gate.promoted:
        log.info("gate PASSED: %s version %s is now the champion", r["model_name"], r["version"])
        return
    stays = f"version {r['champion_after']}" if r["champion_after"] else "unset"
    log.warning(
        "gate FAILED: %s version %s was NOT promoted (champion stays %s). Reasons:\n  - %s",
        r["model_name"],
        r["version"],
        stays,
        "\n  - ".join(gate.reasons),
    )
