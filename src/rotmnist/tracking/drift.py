"""The MLflow run of `rotmnist drift`: one run per input drift check, tagged `role = input_drift` and its verdict.

Input drift (unlabelled inputs moving) is told apart from the gate's concept drift (holdout check), whose
flag is the registry version's `concept_drift` tag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rotmnist.tracking.store import role_tag

ROLE = "input_drift"  # the run's role, and the artifact folder of its report and plot


def input_drift_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Per feature: PSI, KS statistic and p, the share outside the reference's range, drifted (1/0)."""
    out: dict[str, float] = {"features_drifted": float(sum(f["drifted"] for f in report["features"].values()))}
    for name, f in report["features"].items():
        out |= {
            f"{name}_psi": f["psi"],
            f"{name}_ks": f["ks_statistic"],
            f"{name}_p_value": f["p_value"],
            f"{name}_outside_share": f["outside_share"],
            f"{name}_recent_mean": f["recent_mean"],
            f"{name}_drifted": float(f["drifted"]),
        }
    return out


def log_input_drift_run(report: dict[str, Any], params: dict[str, Any], tags: dict[str, str], files: list[Path]) -> str:
    """Log the input drift check as a new MLflow run (metrics, `params`, the report and plot files); return its id."""
    import mlflow

    run_tags = tags | role_tag(ROLE) | {"verdict": report["verdict"]}
    with mlflow.start_run(run_name=f"input-drift-{report['verdict']}", tags=run_tags) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(input_drift_metrics(report))
        for f in files:
            mlflow.log_artifact(str(f), ROLE)
    return run.info.run_id
