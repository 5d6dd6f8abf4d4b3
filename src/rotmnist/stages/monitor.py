"""Stage `monitor`: the concept drift check (holdout check), registration, and gated promotion to `champion`.

The candidate from `finetune` (train's model, or that model fine-tuned on people's corrections) is
registered as a new version of `monitor.model_name` (alias `candidate`), scored on the holdout split
(overall, per angle, per class) and, with the current champion re-scored on the same images, moved to
alias `champion` only if the gate passes. A failed gate is a normal outcome: the stage succeeds,
reports why, and the champion stays where it was.

The report, `reports/monitor.json`, holds no null: a key that would have no value is left out.
`registry.champion_before`, `registry.compared_with`, `registry.champion_after` and `champion_holdout`
appear only when there is such a champion; `feedback` (accuracy on the held-out corrections,
data/feedback/holdout, beside the holdout's angles) only when there are corrections. Its headline figures,
`metrics/monitor.json`, follow the same rule: `champion_version` only with a champion after the gate,
`feedback_accuracy` only with held-out corrections, the worst angle beyond the trained ones only when
`monitor.circle` reaches past them.

`circle`: the candidate's accuracy on the upright test and holdout digits turned by each angle of
`monitor.circle` (by default -90..+90 in 15-degree steps), far beyond the trained angles too; the gate
reports it and, with `monitor.far_threshold` set, fails on the holdout's error there.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rotmnist import io
from rotmnist.config import Config, MonitorConfig
from rotmnist.data import feedback as corrections
from rotmnist.data.dataset import Dataset, load_dataset
from rotmnist.errors import PipelineError
from rotmnist.learning import plots
from rotmnist.learning.circle import circle_accuracy, far_angles
from rotmnist.learning.gate import GATE_FAILED, GATE_TAG, Gate, class_distribution, decide
from rotmnist.learning.metrics import auc, one_vs_rest_roc, roc_grid, sample_curve, slice_metrics, worst_angle
from rotmnist.paths import Paths
from rotmnist.reports import write_report
from rotmnist.spec import N_CLASSES
from rotmnist.tracking import registry, store
from rotmnist.tracking.train import read_run_reference

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

TAG_VALUE_MAX = 5000  # MLflow's limit on a model version tag value
ROC_POINTS = 300  # false positive rates each class's ROC curve is sampled at for `dvc plots`


def flat_metrics(report: dict[str, Any], prefix: str = "holdout") -> dict[str, float]:
    """The report's numbers as MLflow metric names (holdout_accuracy, holdout_accuracy_angle_-30, ...)."""
    h = report[prefix]
    out = {f"{prefix}_accuracy": h["accuracy"], f"{prefix}_error": h["error_rate"]}
    out |= {f"{prefix}_accuracy_angle_{a}": m["accuracy"] for a, m in h["per_angle"].items()}
    out |= {f"{prefix}_accuracy_class_{c}": m["accuracy"] for c, m in h["per_class"].items()}
    out[f"{prefix}_sources_wrong_at_every_angle"] = h["every_angle_errors"]["sources_wrong_at_every_angle"]
    roc = report.get("roc_auc", {})
    out |= {f"{prefix}_auc_macro": roc["macro"]} if roc else {}
    out |= {f"{prefix}_auc_class_{c}": v for c, v in roc.get("per_class", {}).items()}
    dist = report["class_distribution"]
    out |= {f"{prefix}_pred_chi2": dist["chi2"]} if "chi2" in dist else {}
    out |= {f"{prefix}_pred_chi2_pvalue": dist["p_value"]} if "p_value" in dist else {}
    fb = report.get("feedback", {})
    out |= {f"feedback_{k}": fb[k] for k in ("accuracy", "champion_accuracy") if k in fb}
    for split, accuracy in report.get("circle", {}).items():
        out |= {f"circle_{split}_accuracy_angle_{a}": acc for a, acc in accuracy.items()}
    out["gate_passed"] = float(report["gate"]["passed"])
    out["gate_concept_drift"] = float(report["gate"]["drift"])
    return out


def version_tags(report: dict[str, Any], commit: str, data_hash: str) -> dict[str, str]:
    """Model version tags: the gate's decision and reasons, holdout metrics, and lineage."""
    g, h = report["gate"], report["holdout"]
    tags = {
        GATE_TAG: g["decision"],
        "gate_reasons": g["reasons"],
        "concept_drift": str(g["drift"]).lower(),
        "compared_with": f"v{report['registry']['compared_with']}" if "compared_with" in report["registry"] else "none",
        "holdout_n": str(h["n"]),
        "holdout_accuracy": f"{h['accuracy']:.6f}",
        "holdout_error": f"{h['error_rate']:.6f}",
        **{f"holdout_accuracy_angle_{a}": f"{m['accuracy']:.6f}" for a, m in h["per_angle"].items()},
        "threshold": str(g["threshold"]),
        "angle_threshold": str(g["angle_threshold"]),
        "tolerance": str(g["tolerance"]),
        **({"feedback_accuracy": f"{report['feedback']['accuracy']:.6f}"} if "feedback" in report else {}),
        **({"feedback_n": str(report["feedback"]["n"])} if "feedback" in report else {}),
        "git_commit": commit,
        "data_hash": data_hash,
        "training_run_id": report["training_run_id"],
    }
    return {k: v[:TAG_VALUE_MAX] for k, v in tags.items()}


def evaluate_champion(
    client: MlflowClient, name: str, holdout: Dataset
) -> tuple[registry.Classifier | None, dict[str, Any] | None]:
    """Load the current champion from the registry (with its fallback) and score it on the holdout."""
    try:
        champion = registry.load_champion(name, client=client)
    except registry.RegistryError as err:
        log.warning("the current champion cannot be loaded (%s); judging the candidate on the thresholds alone", err)
        return None, None
    yhat = champion.predict_proba(holdout.x, progress=f"champion v{champion.version}").argmax(axis=1)
    return champion, slice_metrics(holdout.y, yhat, holdout.angle)


def roc_auc(curves: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """AUC of each class's one-vs-rest ROC curve and their mean (empty without a curve)."""
    per_class = {str(c): round(auc(*curve), 6) for c, curve in sorted(curves.items())}
    return {"macro": round(float(np.mean(list(per_class.values()))), 6), "per_class": per_class} if per_class else {}


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
    roc: dict[str, Any] | None = None,
    feedback: dict[str, Any] | None = None,
    circle: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """The content of reports/monitor.json: decision, registry state, every slice metric (no lists, no nulls)."""
    before = int(previous.version) if previous else None
    after = int(version) if gate.promoted else before
    registry_state = {
        "model_name": cfg.model_name,
        "version": int(version),
        "champion_before": before,
        "compared_with": int(champion_version) if champion_version else None,
        "champion_after": after,
    }
    report = {
        "gate": {
            "decision": gate.decision,
            "passed": gate.promoted,
            "drift": gate.concept_drift,  # the mission's drift flag: concept drift (holdout check)
            "reasons": "; ".join(gate.reasons) or "none",
            "threshold": cfg.threshold,
            "angle_threshold": cfg.angle_threshold,
            "tolerance": cfg.tolerance,
        },
        "registry": {k: v for k, v in registry_state.items() if v is not None},
        "training_run_id": run_id,
        "holdout": metrics,
        "champion_holdout": champion_metrics,
        "feedback": feedback or None,
        "circle": circle or None,
        "roc_auc": roc or None,
        "class_distribution": distribution,
    }
    return {k: v for k, v in report.items() if v is not None}


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """metrics/monitor.json from reports/monitor.json: holdout accuracy (overall, worst angle), the gate, versions."""
    h, r = report["holdout"], report["registry"]
    angle, accuracy = worst_angle({a: m["accuracy"] for a, m in h["per_angle"].items()})
    far = far_angles(report.get("circle", {}).get("test", {}))
    far_angle, far_accuracy = worst_angle(far) if far else (None, None)
    return {
        "holdout_accuracy": h["accuracy"],
        "holdout_worst_angle": angle,
        "holdout_worst_angle_accuracy": accuracy,
        "test_far_worst_angle": far_angle,
        "test_far_worst_accuracy": far_accuracy,
        "feedback_accuracy": report.get("feedback", {}).get("accuracy"),
        "gate_passed": report["gate"]["passed"],
        "version": r["version"],
        "champion_version": r.get("champion_after"),
        "seconds": report["seconds"],
    }


def feedback_slice(
    held_out: Dataset, candidate: registry.Classifier, champion: registry.Classifier | None
) -> dict[str, Any] | None:
    """Accuracy of the candidate (and the champion) on the held-out corrections; None without any."""
    if len(held_out) == 0:
        return None
    right = candidate.predict_proba(held_out.x).argmax(axis=1) == held_out.y
    out = {"n": len(held_out), "accuracy": float(right.mean()), "error_rate": float(1 - right.mean())}
    if champion is not None:
        out["champion_accuracy"] = float((champion.predict_proba(held_out.x).argmax(axis=1) == held_out.y).mean())
    return out


def load_candidate(client: MlflowClient, name: str, version: str, model_uri: str) -> registry.Classifier:
    """Load the just-registered version from the registry; a model that does not load is tagged failed."""
    try:
        return registry.load_model(f"models:/{name}/{version}", version)
    except registry.RegistryError as err:  # a missing or damaged artifact, a failing store; a bug propagates
        client.set_model_version_tag(name, version, GATE_TAG, GATE_FAILED)
        client.set_model_version_tag(name, version, "gate_reasons", f"the model does not load: {err}"[:TAG_VALUE_MAX])
        raise PipelineError(f"candidate {name} version {version} ({model_uri}) does not load: {err}") from err


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


def roc_rows(curves: dict[int, tuple[np.ndarray, np.ndarray]], points: int = ROC_POINTS) -> list[dict[str, Any]]:
    """Every class's ROC curve sampled at the same false positive rates (blank without a curve): the DVC plot's data.

    A few hundred rows instead of one point per holdout image, so `dvc plots show` stays fast.
    """
    grid = roc_grid(points)
    columns = {c: sample_curve(*curves[c], grid) if c in curves else None for c in range(N_CLASSES)}
    return [
        {"fpr": round(float(f), 6)}
        | {f"class_{c}": round(float(tpr[i]), 6) if tpr is not None else "" for c, tpr in columns.items()}
        for i, f in enumerate(grid)
    ]


def circle_rows(circle: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """plots/monitor/circle.csv: per angle of `monitor.circle`, the candidate's test and holdout accuracy."""
    return [{"angle": int(a), **{f"{s}_accuracy": circle[s][a] for s in ("test", "holdout")}} for a in circle["test"]]


def write_plots(
    folder: Path,
    holdout: Dataset,
    probs: np.ndarray,
    report: dict[str, Any],
    gate_line: float,
    curves: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
) -> None:
    """The monitor's plots: CSV for `dvc plots`, PNG for people and MLflow (`curves`: the ROC curves, if known)."""
    r = report["registry"]
    rows = angle_rows(report["holdout"], report.get("champion_holdout"))
    io.write_csv(folder / "angle_accuracy.csv", rows)
    plots.plot_angle_accuracy(
        rows,
        folder / "angle_accuracy.png",
        gate_line,
        (f"candidate v{r['version']}", f"champion v{r.get('compared_with')}"),
    )
    yhat = probs.argmax(axis=1)
    pairs = zip(holdout.y.tolist(), yhat.tolist(), strict=True)
    io.write_csv(folder / "confusion.csv", [{"actual": a, "predicted": p} for a, p in pairs])
    plots.plot_confusion(holdout.y, yhat, folder / "confusion.png")
    plots.plot_misclassified(holdout, probs, folder / "misclassified.png")
    curves = curves if curves is not None else one_vs_rest_roc(holdout.y, probs)
    io.write_csv(folder / "roc.csv", roc_rows(curves))
    plots.plot_roc(curves, folder / "roc.png")
    if "circle" in report:
        rows = circle_rows(report["circle"])
        io.write_csv(folder / "circle.csv", rows)
        plots.plot_circle(rows, folder / "circle.png", gate_line)


def main(config: Config, paths: Paths) -> None:
    """Score the candidate on the holdout, register it, promote it if the gate passes, write the report."""
    from mlflow import MlflowClient

    start = time.perf_counter()
    cfg, name = config.monitor, config.monitor.model_name
    run = read_run_reference(paths.candidate_reference, made_by="finetune")
    holdout, test = load_dataset(paths.split("holdout")), load_dataset(paths.split("test"))
    if len(holdout) == 0 or len(test) == 0:
        raise PipelineError("the holdout and test splits must not be empty; check split.holdout_fraction")
    store.configure_mlflow(config, paths)
    client = MlflowClient()

    previous = registry.champion_version(client, name)
    v = str(registry.register_candidate(client, name, run["model_uri"], run["run_id"]).version)
    candidate = load_candidate(client, name, v, run["model_uri"])
    log.info("scoring %s version %s on %d holdout images", name, v, len(holdout))
    probs = candidate.predict_proba(holdout.x, progress=f"candidate v{v}")
    metrics = slice_metrics(holdout.y, probs.argmax(axis=1), holdout.angle, holdout.source_id)

    champion, champion_metrics = None, None
    if previous is not None and str(previous.version) != v:  # re-running on the champion itself: nothing to compare
        champion, champion_metrics = evaluate_champion(client, name, holdout)
    champion_v = champion.version if champion else None
    held_out = feedback_slice(corrections.load(paths.feedback / "holdout").data, candidate, champion)
    log.info("turning the upright test and holdout digits by %s degrees", cfg.circle)
    circle = {
        s: circle_accuracy(candidate.predict_proba, d, cfg.circle) for s, d in (("test", test), ("holdout", holdout))
    }
    label = f"champion v{champion_v}"
    gate = decide(metrics, champion_metrics, cfg, label, feedback=held_out, far=far_angles(circle["holdout"]))
    distribution = class_distribution(holdout.y, probs.argmax(axis=1))
    curves = one_vs_rest_roc(holdout.y, probs)
    report = build_report(
        cfg,
        gate,
        v,
        previous,
        champion_v,
        run["run_id"],
        metrics,
        champion_metrics,
        distribution,
        roc_auc(curves),
        held_out,
        circle,
    )

    # The report first, the registry's decision last (champion alias the very last write): a crash in
    # between leaves the champion where it was, so the rerun reuses this version, compares it with the
    # same champion and reaches the same decision and report.
    write_report(paths.report("monitor"), paths.headline("monitor"), report, headline, start)
    plot_dir = paths.plots / "monitor"
    write_plots(plot_dir, holdout, probs, report, 1 - cfg.angle_threshold, curves)
    registry.record_on_training_run(client, run["run_id"], report, flat_metrics(report), plot_dir)
    lineage = store.data_digest(paths, *paths.lineage_data(bool(run.get("finetuned"))))
    tags = version_tags(report, store.git_commit(paths), lineage)
    registry.record_decision(client, name, v, tags, promoted=gate.promoted)
    _announce(report, gate)


def _announce(report: dict[str, Any], gate: Gate) -> None:
    r, h = report["registry"], report["holdout"]
    angle, accuracy = worst_angle({a: m["accuracy"] for a, m in h["per_angle"].items()})
    log.info(
        "holdout accuracy %.2f%% (worst angle %d deg: %.2f%%); mean one-vs-rest AUC %s; "
        "predicted-class chi-square p = %s",
        100 * h["accuracy"],
        angle,
        100 * accuracy,
        report.get("roc_auc", {}).get("macro", "n/a"),
        report["class_distribution"].get("p_value", "n/a"),
    )
    if "feedback" in report:
        fb = report["feedback"]
        champion = f" (champion {100 * fb['champion_accuracy']:.2f}%)" if "champion_accuracy" in fb else ""
        log.info("feedback slice: %d held-out corrections, accuracy %.2f%%%s", fb["n"], 100 * fb["accuracy"], champion)
    if gate.promoted:
        log.info("gate PASSED: %s version %s is now the champion", r["model_name"], r["version"])
        return
    stays = f"version {r['champion_after']}" if "champion_after" in r else "unset"
    flagged = "; concept drift (holdout check) flagged" if gate.concept_drift else ""
    log.warning(
        "gate FAILED: %s version %s was NOT promoted (champion stays %s)%s. Reasons:\n  - %s",
        r["model_name"],
        r["version"],
        stays,
        flagged,
        "\n  - ".join(gate.reasons),
    )
