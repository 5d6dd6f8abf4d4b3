"""The markdown tables the docs generate from the committed run's reports, checked against those reports.

`TABLES` names, for each table, its page, its header and the function that renders its rows from the source
files, so after a new `make repro` a failing table prints the rows the page should hold now.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pytest

from tests.support.figures import (
    COMPARE_R,
    CURRICULUM_R,
    MONITOR_R,
    ROOT,
    TRAIN_R,
    angle,
    load,
    pct,
    signed,
)

RS = "docs/results.md"


class Table(NamedTuple):
    page: str
    header: str  # the table's first line, as on the page
    render: Callable[[], list[str]]  # every row under the header and its separator, from the source files


ANGLES = ("-30", "-20", "-10", "10", "20", "30")


def accuracy_rows() -> list[str]:
    """The committed run's accuracy per angle on test and holdout."""
    rows = []
    for split, source, key in (("test", TRAIN_R, "test"), ("holdout", MONITOR_R, "holdout")):
        m = load(source)[key]
        cells = [pct(m["accuracy"]), *(pct(m["per_angle"][a]["accuracy"]) for a in ("0", *ANGLES))]
        rows.append(f"| {split} ({m['n']:,}) | " + " | ".join(cells) + " |")
    return rows


def compare_rows() -> list[str]:
    """One row per configuration of the committed `compare`."""
    rows = []
    for name, r in load(COMPARE_R)["configurations"].items():
        acc = r["angle_accuracy"]
        cells = [
            f"`{name}`",
            f"`{r['model']}`",
            pct(r["accuracy"]),
            pct(r["upright_accuracy"]),
            pct(acc["-30"]),
            pct(acc["30"]),
            f"{pct(r['worst_angle_accuracy'])} ({angle(r['worst_angle'])})",
            f"{r['latency_ms_p50']:.2f}",
            f"{r['latency_ms_p99']:.2f}",
            f"{r['batch_images_per_second']:,.0f}",
            f"{r['parameters']:,}",
            f"{r['model_bytes'] / 1024:,.0f} KiB",
            f"{r['train_images']:,}",
            f"{r['train_seconds']:,.0f}",
            "**met**" if r["sla_met"] else "no",
            "yes" if r["pareto"] else "",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def curriculum_phase_rows() -> list[str]:
    """Per phase of the committed drift story: the error on arrival (its first round), retrainings, new images."""
    report, rounds = load(CURRICULUM_R), load("plots/curriculum/rounds.csv")
    rows = []
    for key, phase in report["phases"].items():
        number, _, arrived = key.split("_")
        first = next(r for r in rounds if r["phase"] == number)
        cells = [
            number,
            angle(arrived),
            pct(float(first["worst_angle_error"])),
            str(phase["rounds"]),
            f"{phase['new_images']:,}",
            pct(phase["worst_angle_error"]),
            "yes" if phase["satisfied"] else "**no**",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def curriculum_final_rows() -> list[str]:
    report = load(CURRICULUM_R)
    final, cl = report["final"]["accuracy"], report["continual"]
    cells = [pct(final[f"angle_{a}"]) for a in ("-30", "-20", "-10", "0", "10", "20", "30")]
    cells += [f"{cl['acc']:.4f}", signed(cl["bwt"], 4), signed(cl["fwt"], 3)]
    return ["| the committed run | " + " | ".join(cells) + " |"]


TABLES = [
    Table(RS, "| split | overall | upright | −30° | −20° | −10° | +10° | +20° | +30° |", accuracy_rows),
    Table(
        RS,
        "| configuration | model | test | upright | −30° | +30° | worst angle | p50 ms | p99 ms | batch 256 img/s "
        "| params | file | train images | train s | SLA | Pareto |",
        compare_rows,
    ),
    Table(
        RS,
        "| phase | angle | worst angle's error on arrival | retrainings | new images | worst angle's error at the end "
        "| satisfied |",
        curriculum_phase_rows,
    ),
    Table(RS, "| run | −30° | −20° | −10° | 0° | +10° | +20° | +30° | ACC | BWT | FWT |", curriculum_final_rows),
]


@pytest.mark.parametrize("table", TABLES, ids=[t.header[:40] for t in TABLES])
def test_the_page_holds_the_table_its_source_generates(table):
    lines = (ROOT / table.page).read_text().splitlines()
    assert table.header in lines, f"{table.page} has no table headed {table.header!r}"
    start = lines.index(table.header) + 2  # past the separator
    on_page = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        on_page.append(line)
    want = table.render()
    if on_page != want:
        pytest.fail(f"{table.page}: the table under\n{table.header}\nshould read:\n" + "\n".join(want), pytrace=False)
