"""What each headline figure (metrics/<stage>.json) is in its stage's report (reports/<stage>.json), spelled
out apart from the stages' code, so that a test compares the two files a stage wrote."""

from __future__ import annotations

from typing import Any


def worst_angle(per_angle: dict) -> tuple[int, float]:
    """The angle (degrees) with the lowest accuracy, the smallest one on a tie, and that accuracy."""
    accuracy = {int(a): m["accuracy"] for a, m in per_angle.items()}
    angle = min(accuracy, key=lambda a: (accuracy[a], a))
    return angle, accuracy[angle]


# Each headline key and its value in the stage's report (None: the key is absent from the headline).
HEADLINES = {
    "tune": {
        "best_val_accuracy": lambda r: r["best_val_accuracy"],
        "trials_complete": lambda r: r["trials"]["complete"],
    },
    "train": {
        "val_accuracy": lambda r: r.get("val_accuracy"),
        "test_accuracy": lambda r: r["test"]["accuracy"],
        "test_upright_accuracy": lambda r: r["test"]["per_angle"]["0"]["accuracy"],
        "test_worst_angle": lambda r: worst_angle(r["test"]["per_angle"])[0],
        "test_worst_angle_accuracy": lambda r: worst_angle(r["test"]["per_angle"])[1],
        "images_per_second": lambda r: r["images_per_second"],
    },
    "finetune": {
        "finetuned": lambda r: r["finetuned"],
        "test_largest_drop_points": lambda r: r.get("test_change", {}).get("largest_drop"),
    },
    "monitor": {
        "holdout_accuracy": lambda r: r["holdout"]["accuracy"],
        "holdout_worst_angle": lambda r: worst_angle(r["holdout"]["per_angle"])[0],
        "holdout_worst_angle_accuracy": lambda r: worst_angle(r["holdout"]["per_angle"])[1],
        "test_far_worst_angle": lambda r: far_worst(r)[0],
        "test_far_worst_accuracy": lambda r: far_worst(r)[1],
        "feedback_accuracy": lambda r: r.get("feedback", {}).get("accuracy"),
        "gate_passed": lambda r: r["gate"]["passed"],
        "version": lambda r: r["registry"]["version"],
        "champion_version": lambda r: r["registry"].get("champion_after"),
    },
    "compare": {
        "pipeline_worst_angle_accuracy": lambda r: r["configurations"]["pipeline"]["worst_angle_accuracy"],
        "pipeline_latency_ms_p99": lambda r: r["configurations"]["pipeline"]["latency_ms_p99"],
        "configurations_meeting_sla": lambda r: sum(c["sla_met"] for c in r["configurations"].values()),
    },
    "curriculum": {
        "rounds": lambda r: r["rounds"],
        "retrainings": lambda r: r["retrainings"],
        "all_satisfied": lambda r: r["all_satisfied"],
        "final_min_accuracy": lambda r: r["final"]["min_accuracy"],
    },
}


def far_worst(report: dict[str, Any]) -> tuple[int | None, float | None]:
    """The lowest test accuracy of the circle beyond +-30 degrees (the smaller angle on a tie); Nones without one."""
    far = sorted((acc, int(a)) for a, acc in report.get("circle", {}).get("test", {}).items() if abs(int(a)) > 30)
    return (far[0][1], far[0][0]) if far else (None, None)


def expected_headline(stage: str, report: dict[str, Any]) -> dict[str, Any]:
    """The headline `stage` must write for `report`: every key with a value, and the stage's `seconds`."""
    expected = {k: get(report) for k, get in HEADLINES[stage].items()} | {"seconds": report["seconds"]}
    return {k: v for k, v in expected.items() if v is not None}
