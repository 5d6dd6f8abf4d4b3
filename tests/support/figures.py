"""The committed run's files and how the README and docs write the figures they hold.

Shared by the checks of the figures (tests/unit/test_figures.py) and of the generated tables (test_tables.py).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
MINUS = "\u2212"  # the docs write negative angles and signed figures with a minus sign, not a hyphen


def signed(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}".replace("-", MINUS)


def angle(value: int | str) -> str:
    return f"{int(value):+d}°".replace("-", MINUS).replace("+0°", "0°")


def duration(seconds: float) -> str:
    """`17 min 1 s`, `4 min`, `25 s`: a stage's `seconds`, rounded to the second."""
    minutes, rest = divmod(round(seconds), 60)
    if not minutes:
        return f"{rest} s"
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


def error_counts(per_angle: dict[str, Any]) -> str:
    """`23 to 30`: the fewest and most digits misread at one angle."""
    counts = sorted(round(m["n"] * (1 - m["accuracy"])) for m in per_angle.values())
    return f"{counts[0]} to {counts[-1]}"


def names(rows: dict[str, Any], flag: str) -> str:
    """`` `a`, `b` ``: the configurations of a compare report whose `flag` is true."""
    return ", ".join(f"`{name}`" for name, row in rows.items() if row[flag])


def final_angle(accuracy: dict[str, float]) -> str:
    """The angle of the lowest final accuracy in curriculum's `final.accuracy` (`angle_-30`, ...; the smallest on
    a tie, as the stages choose)."""
    by_angle = {int(k.removeprefix("angle_")): v for k, v in accuracy.items()}
    return angle(min(sorted(by_angle), key=by_angle.__getitem__))


FORMATS: dict[str, Callable[[Any], str]] = {
    "percent": lambda v: f"{100 * v:.2f} %",  # 0.994943 -> 99.49 %
    "percent0": lambda v: f"{100 * v:.0f} %",  # 0.257 -> 26 %
    "count": lambda v: f"{round(v):,}",  # 2875.8 -> 2,876
    "duration": duration,  # 1020.8 -> 17 min 1 s
    "ms": lambda v: f"{v:.2f} ms",  # 3.486 -> 3.49 ms
    "text": str,
    "passed": lambda v: "passed" if v else "failed",
    "satisfied": lambda v: "every phase satisfied" if v else "not every phase satisfied",
    "bf16": lambda v: "with AVX512-BF16" if v else "without AVX512-BF16",
    "md5": str,  # the whole hash
    "md5_short": lambda v: f"{v[:8]}…",  # 839399bd…
    "angle": angle,  # -30 -> −30°
    "error_counts": error_counts,  # over a `per_angle` mapping: 23 to 30
    "final_angle": final_angle,  # over curriculum's `final.accuracy`: +30°
    # over compare's `configurations`
    "sla_met": lambda v: names(v, "sla_met"),  # `pipeline`
    "pareto": lambda v: names(v, "pareto"),
    "slowest_p99": lambda v: FORMATS["ms"](max(r["latency_ms_p99"] for r in v.values())),
}

TRAIN, MONITOR, TUNE = "metrics/train.json", "metrics/monitor.json", "metrics/tune.json"
COMPARE, CURRICULUM = "metrics/compare.json", "metrics/curriculum.json"
TRAIN_R, MONITOR_R, TUNE_R = "reports/train.json", "reports/monitor.json", "reports/tune.json"
COMPARE_R, CURRICULUM_R = "reports/compare.json", "reports/curriculum.json"
SUITE, LOCK = "benchmarks/results/test_suite.json", "dvc.lock"


@cache
def load(source: str) -> Any:
    """A source file's content; for dvc.lock, {output path: MD5} over every stage."""
    path = ROOT / source
    if source == LOCK:
        lock = yaml.safe_load(path.read_text())
        return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    return json.loads(path.read_text())


MISSING = object()


def lookup(source: str, key: str) -> Any:
    data = load(source)
    if source == LOCK:
        return data.get(key, MISSING)
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return MISSING
        data = data[part]
    return data


@cache
def page_text(page: str) -> str:
    """The page with every run of whitespace (line breaks included) as one space."""
    return " ".join((ROOT / page).read_text().split())


def pct(value: float) -> str:
    return FORMATS["percent"](value)
