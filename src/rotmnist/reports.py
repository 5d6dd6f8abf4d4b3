"""A stage's report (`reports/<stage>.json`) and its DVC metrics file (`metrics/<stage>.json`).

Every metrics file goes through `write_metrics`, which refuses what `dvc metrics show` cannot show.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rotmnist.io import write_json


def metrics_problems(data: Any, where: str = "") -> list[str]:
    """Why `dvc metrics show` could not show `data`: every value that is not a number, bool or string, by key path.

    DVC reads a metrics file as nested objects; it drops a null, a list or a non-finite number with a
    "failed to load some metrics" warning, and takes any key named `error` for its own load failure (hence
    `error_rate` in the slice metrics), so the pipeline writes none of them.
    """
    if isinstance(data, dict):
        named_error = [f"{where}.error" if where else "error"] if "error" in data else []
        return [f"{k}: DVC reads a key named 'error' as a failed load" for k in named_error] + [
            p for k, v in data.items() for p in metrics_problems(v, f"{where}.{k}" if where else str(k))
        ]
    if isinstance(data, bool | str) or (isinstance(data, int | float) and math.isfinite(data)):
        return []
    return [f"{where or '<top>'}: {data!r}"]


def rounded(value: Any) -> Any:
    """`value` with every float (also inside dicts) rounded to 6 decimals, for a readable metrics file."""
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return round(value, 6) if isinstance(value, float) else value


def write_metrics(path: str | Path, data: dict[str, Any]) -> None:
    """Write a DVC metrics file (JSON, atomically); ValueError naming the keys DVC could not show."""
    problems = metrics_problems(data) if isinstance(data, dict) else [f"<top>: {data!r} (not an object)"]
    if problems:
        raise ValueError(f"{path} would hold values DVC cannot show: {'; '.join(problems)}")
    write_json(path, data)


def write_report(
    report_path: str | Path,
    headline_path: str | Path,
    report: dict[str, Any],
    headline: Callable[[dict[str, Any]], dict[str, Any]],
    start: float,
) -> dict[str, Any]:
    """Write a stage's full report and the headline figures derived from it; return the report as written.

    The report gains `seconds`, the stage's wall time since `start` (`time.perf_counter()`); the headline is
    `headline(report)` less its keys without a value (DVC cannot show a null). It is checked before either file is
    written: one number, bool or string per key, so that `dvc metrics show` and `dvc exp show` stay one short row.
    """
    report = report | {"seconds": round(time.perf_counter() - start, 1)}
    figures = {k: v for k, v in headline(report).items() if v is not None}
    problems = [f"{k}: holds more than one value" for k, v in figures.items() if isinstance(v, dict)]
    problems += metrics_problems(figures)
    if problems:
        raise ValueError(f"{headline_path} would not be a flat row of values DVC can show: {'; '.join(problems)}")
    write_json(report_path, report)
    write_metrics(headline_path, figures)
    return report
