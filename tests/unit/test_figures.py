"""The figures the README and docs quote from the committed run, checked against the files they come from.

`FIGURES` names, for each figure a page quotes, the page, the words around it (`{}` stands for the figure),
its source (a file and a key in it) and how it is written. The expected text is formatted from the file,
never typed here, so after a new `make repro` a failing row says which text the page should hold now.
Whole markdown tables generated from a report are checked in test_tables.py. `ONE_PLACE` lists measured figures
that no committed file holds (benchmarks run by hand, whole-run times): each lives on one page only, and the
others link to it.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import pytest

from tests.support.figures import (
    COMPARE,
    COMPARE_R,
    CURRICULUM,
    CURRICULUM_R,
    FORMATS,
    LOCK,
    MINUS,
    MISSING,
    MONITOR,
    MONITOR_R,
    PAGES,
    SUITE,
    TRAIN,
    TRAIN_R,
    TUNE,
    TUNE_R,
    angle,
    duration,
    lookup,
    page_text,
)


class Figure(NamedTuple):
    page: str  # README.md or docs/<page>.md
    text: str  # the words around the figure, `{}` where it stands; line breaks count as one space
    source: str  # a JSON file (reports/ for the detail, metrics/ for the headline figures) or dvc.lock
    key: str  # a dotted path into the JSON; for dvc.lock, the path of a stage output (its MD5)
    fmt: str  # a name in FORMATS


F = Figure
WRONG_EVERYWHERE = "every_angle_errors.sources_wrong_at_every_angle"
SHARE_EVERYWHERE = "every_angle_errors.share_of_errors"
RM, IX, GS, TR, RS = "README.md", "docs/index.md", "docs/getting-started.md", "docs/tracking.md", "docs/results.md"
CMP = "configurations"
FIGURES: list[Figure] = [
    # README.md: What you get
    F(RM, "7 angles) | {} overall,", TRAIN, "test_accuracy", "percent"),
    F(RM, "overall, {} upright,", TRAIN, "test_upright_accuracy", "percent"),
    F(RM, "upright, {} at the worst angle", TRAIN, "test_worst_angle_accuracy", "percent"),
    F(RM, "at the worst angle ({}) | `metrics/train.json`", TRAIN, "test_worst_angle", "angle"),
    F(RM, "tuned on) | {} overall,", MONITOR, "holdout_accuracy", "percent"),
    F(RM, "overall, {} at the worst angle (−30°)", MONITOR, "holdout_worst_angle_accuracy", "percent"),
    F(RM, "at the worst angle ({}); gate", MONITOR, "holdout_worst_angle", "angle"),
    F(RM, "; gate {}, version", MONITOR, "gate_passed", "passed"),
    F(RM, ", version {} is `champion` | `metrics/monitor.json`", MONITOR, "champion_version", "text"),
    F(RM, "| −45°/+45°: {} /", MONITOR_R, "circle.test.-45", "percent"),
    F(RM, "−45°/+45°: 97.79 % / {}; ±60°", MONITOR_R, "circle.test.45", "percent"),
    F(RM, "; ±60°: {} /", MONITOR_R, "circle.test.-60", "percent"),
    F(RM, "±60°: 86.88 % / {}; ±90°", MONITOR_R, "circle.test.60", "percent"),
    F(RM, "; ±90°: {} /", MONITOR_R, "circle.test.-90", "percent"),
    F(RM, "±90°: 51.42 % / {} (about", MONITOR_R, "circle.test.90", "percent"),
    F(RM, "| `tune` {}, `train`", TUNE, "seconds", "duration"),
    F(RM, ", `train` {} (", TRAIN, "seconds", "duration"),
    F(RM, " ({} images/s), `monitor`", TRAIN, "images_per_second", "count"),
    F(RM, ", `monitor` {}; `download`", MONITOR, "seconds", "duration"),
    F(RM, "| `compare` {} (of 7", COMPARE, "seconds", "duration"),
    F(RM, "(of 7 configurations, {} meets the SLA)", COMPARE, "configurations_meeting_sla", "text"),
    F(RM, ", `curriculum` {} (", CURRICULUM, "seconds", "duration"),
    F(RM, " s ({} rounds, ", CURRICULUM, "rounds", "text"),
    F(RM, " rounds, {}) |", CURRICULUM, "all_satisfied", "satisfied"),
    F(RM, "(MD5 `{}`, recorded in `dvc.lock`)", LOCK, "models/model.pt", "md5_short"),
    # docs/index.md
    F(IX, "model reaches {} on the rotated test digits", TRAIN, "test_accuracy", "percent"),
    F(IX, "test digits ({} at its worst angle,", TRAIN, "test_worst_angle_accuracy", "percent"),
    F(IX, "at its worst angle, {}) and", TRAIN, "test_worst_angle", "angle"),
    F(IX, ") and {} on the holdout", MONITOR, "holdout_accuracy", "percent"),
    # docs/getting-started.md: the test suite (quoted there only), the reports' times, the model's hash
    F(GS, "**{} passed**", SUITE, "passed", "count"),
    F(GS, "**{} skipped**", SUITE, "skipped", "count"),
    F(GS, "**{} failed**", SUITE, "failed", "count"),
    F(GS, "pytest took **{}**", SUITE, "seconds", "duration"),
    F(GS, "with the creation of `.venv` **{}**", SUITE, "make_seconds", "duration"),
    F(GS, "; on `{}` (", SUITE, "cpu", "text"),
    F(GS, "` ({} cores, with", SUITE, "cores", "text"),
    F(GS, " cores, {}), with PostgreSQL", SUITE, "avx512_bf16", "bf16"),
    F(GS, "dvc repro -f -s compare # {} in the committed run", COMPARE, "seconds", "duration"),
    F(GS, "dvc repro -f -s curriculum # {} in the committed run", CURRICULUM, "seconds", "duration"),
    F(GS, "`models/model.pt` has MD5 `{}`)", LOCK, "models/model.pt", "md5"),
    # docs/tracking.md: the gate's decision
    F(TR, "The committed run {}: version", MONITOR, "gate_passed", "passed"),
    F(TR, ": version {} of `rotmnist-cnn` is `champion`", MONITOR, "champion_version", "text"),
    F(TR, "is `champion` (holdout {}, worst angle", MONITOR, "holdout_accuracy", "percent"),
    F(TR, ", worst angle {} at", MONITOR, "holdout_worst_angle", "angle"),
    F(TR, " at {}; `dvc metrics show metrics/monitor.json`", MONITOR, "holdout_worst_angle_accuracy", "percent"),
    # docs/results.md: the goals
    F(RS, "| **not met**: {} upright,", TRAIN, "test_upright_accuracy", "percent"),
    F(RS, " upright, {} at +30° ([The committed run]", TRAIN, "test_worst_angle_accuracy", "percent"),
    F(RS, " upright, 99.39 % at {} ([The committed run]", TRAIN, "test_worst_angle", "angle"),
    F(RS, "| **not met**: {} at −30° (", MONITOR, "holdout_worst_angle_accuracy", "percent"),
    F(RS, "| **not met**: 99.03 % at {} (", MONITOR, "holdout_worst_angle", "angle"),
    F(RS, "the lowest is {} (", CURRICULUM, "final_min_accuracy", "percent"),
    F(RS, "the lowest is 98.33 % ({})", CURRICULUM_R, "final.accuracy", "final_angle"),
    # docs/results.md: the committed run
    F(RS, "| `tune` | {} | the study's 8 trials re-read: best trial", TUNE, "seconds", "duration"),
    F(RS, "re-read: best trial {}, val accuracy", TUNE_R, "best_trial", "text"),
    F(RS, ", val accuracy {} |", TUNE, "best_val_accuracy", "percent"),
    F(RS, "| `train` | {} |", TRAIN, "seconds", "duration"),
    F(RS, "| {} images/s; `models/model.pt` MD5", TRAIN, "images_per_second", "count"),
    F(RS, "images/s; `models/model.pt` MD5 `{}`, the same weights", LOCK, "models/model.pt", "md5"),
    F(RS, "| `monitor` | {} | gate", MONITOR, "seconds", "duration"),
    F(RS, "| gate {}: `rotmnist-cnn` version", MONITOR, "gate_passed", "passed"),
    F(RS, ": `rotmnist-cnn` version {} became `champion` (", MONITOR, "champion_version", "text"),
    F(RS, "| `compare` | {} | 7 configurations; the SLA met by", COMPARE, "seconds", "duration"),
    F(RS, "; the SLA met by {} |", COMPARE_R, CMP, "sla_met"),
    F(RS, "| `curriculum` | {} | the drift story:", CURRICULUM, "seconds", "duration"),
    F(RS, "| the drift story: {} rounds,", CURRICULUM, "rounds", "text"),
    F(RS, " rounds, {} |", CURRICULUM, "all_satisfied", "satisfied"),
    F(RS, "Validation accuracy {}.", TRAIN, "val_accuracy", "percent"),
    F(RS, " {} of the 10,000 test digits are misread", TRAIN_R, f"test.{WRONG_EVERYWHERE}", "text"),
    F(RS, "are misread at every angle ({} of the test errors)", TRAIN_R, f"test.{SHARE_EVERYWHERE}", "percent0"),
    F(RS, "The AMD EPYC writes `{}` where that Xeon", LOCK, "models/model.pt", "md5_short"),
    # docs/results.md: where the remaining errors are
    F(RS, "The committed model misreads {} of the 10,000", TRAIN_R, f"test.{WRONG_EVERYWHERE}", "text"),
    F(RS, "at every angle ({} of its test errors)", TRAIN_R, f"test.{SHARE_EVERYWHERE}", "percent0"),
    F(RS, " and {} of the 3,000 holdout digits", MONITOR_R, f"holdout.{WRONG_EVERYWHERE}", "text"),
    F(RS, "holdout digits ({} of its holdout errors)", MONITOR_R, f"holdout.{SHARE_EVERYWHERE}", "percent0"),
    F(RS, "they take {} of the 21 errors per angle", MONITOR_R, f"holdout.{WRONG_EVERYWHERE}", "text"),
    F(RS, "the committed model makes {} per angle", MONITOR_R, "holdout.per_angle", "error_counts"),
    # docs/results.md: comparing configurations
    F(RS, "The committed run's `compare` took {} (", COMPARE, "seconds", "duration"),
    F(RS, "the CNN from {} upright", COMPARE_R, f"{CMP}.cnn-upright.upright_accuracy", "percent"),
    F(RS, " upright to {} at −30°, the MLP", COMPARE_R, f"{CMP}.cnn-upright.worst_angle_accuracy", "percent"),
    F(RS, "at −30°, the MLP to {}, logistic", COMPARE_R, f"{CMP}.mlp-upright.worst_angle_accuracy", "percent"),
    F(RS, "regression to {} at +30°. Training", COMPARE_R, f"{CMP}.logreg-upright.worst_angle_accuracy", "percent"),
    F(RS, "almost nothing upright (CNN {}, MLP", COMPARE_R, f"{CMP}.cnn-rotated.upright_accuracy", "percent"),
    F(RS, ", MLP {}) and lifts", COMPARE_R, f"{CMP}.mlp-rotated.upright_accuracy", "percent"),
    F(RS, "lifts the CNN's worst angle to {} and", COMPARE_R, f"{CMP}.cnn-rotated.worst_angle_accuracy", "percent"),
    F(RS, "and the MLP's to {};", COMPARE_R, f"{CMP}.mlp-rotated.worst_angle_accuracy", "percent"),
    F(RS, "only the pipeline's model does ({} at +30°)", COMPARE, "pipeline_worst_angle_accuracy", "percent"),
    F(RS, "the slowest p99 is {}, inside", COMPARE_R, CMP, "slowest_p99"),
    F(RS, "in the committed run it holds {}.", COMPARE_R, CMP, "pareto"),
    # docs/results.md: the drift story
    F(RS, "**The committed run**: {} rounds (", CURRICULUM, "rounds", "text"),
    F(RS, " rounds ({} trainings of at most", CURRICULUM, "retrainings", "text"),
    F(RS, "60,000 images), `curriculum` {} in all,", CURRICULUM, "seconds", "duration"),
    F(RS, " in all, {}. Per phase", CURRICULUM, "all_satisfied", "satisfied"),
]


# Measured figures with no committed output: (the figure as written, the one page that quotes it).
ONE_PLACE = [
    ("32 min 9 s", GS),  # a fresh clone's `make setup` and `make repro` on the Xeon
    ("2 min 48 s", "docs/benchmarks.md"),  # a fresh clone's `make quick` on the Xeon, after `make setup`
    ("about 29 min", GS),  # the core stages in float32 on a 2-core AMD EPYC with AVX2 only
    ("9 min 32 s", RS),  # the core stages on the AMD EPYC, commit 16f88d2
    ("786,574", "docs/benchmarks.md"),  # benchmarks/augment.py
    ("2.27 / 5.03", "docs/benchmarks.md"),  # benchmarks/serve.py: p50 / p99 at concurrency 1, log on
    ("| 987 |", "docs/benchmarks.md"),  # benchmarks/serve.py: requests/s at concurrency 10, log on
    ("| 3,570 |", "docs/benchmarks.md"),  # benchmarks/serve.py: the decode ceiling's requests/s
    ("99,065 requests", "docs/benchmarks.md"),  # benchmarks/serve_soak.py
    ("62.4", "docs/benchmarks.md"),  # benchmarks/sweep_workers.py, one worker
    ("38,896 sent", "docs/loop.md"),  # benchmarks/loop.py: the bf16 loop's stream at 60°
    ("4 min 19 s", "docs/loop.md"),  # benchmarks/loop.py: the bf16 loop's steps in all
]


def expected_text(fig: Figure, value: Any) -> str:
    return " ".join(fig.text.split()).replace("{}", FORMATS[fig.fmt](value))


def what_the_page_says(fig: Figure) -> str | None:
    """The page's text where the row's context stands, whatever figure it holds now (None: context gone)."""
    before, after = (" ".join(part.split()) for part in fig.text.split("{}"))
    found = re.search(re.escape(before) + r"([^|]{0,60}?)" + re.escape(after), page_text(fig.page))
    return found.group(0) if found else None


@pytest.mark.parametrize("fig", FIGURES, ids=[f"{f.page}:{f.source}:{f.key}" for f in FIGURES])
def test_the_page_quotes_the_figure_its_source_holds(fig):
    value = lookup(fig.source, fig.key)
    if value is MISSING and fig.key == "seconds":
        # Every stage writes its `seconds`; a file without them predates that, until the stage runs again.
        pytest.skip(f"{fig.source} has no `seconds` yet: the next run of its stage writes them")
    if value is MISSING:
        pytest.fail(f"{fig.source} has no `{fig.key}`: fix the row of FIGURES, or the stage that writes it")
    want = expected_text(fig, value)
    if want not in page_text(fig.page):
        found = what_the_page_says(fig)
        where = f'the page has "{found}"' if found else "the text around the figure is not on the page any more"
        shown = "{...}" if isinstance(value, dict) else repr(value)
        pytest.fail(f'{fig.page} should say "{want}" ({fig.source} `{fig.key}` = {shown}); {where}', pytrace=False)


@pytest.mark.parametrize(("figure", "home"), ONE_PLACE, ids=[f for f, _ in ONE_PLACE])
def test_a_figure_without_a_committed_source_lives_on_one_page(figure, home):
    quoting = [page for page in PAGES if figure in page_text(page)]
    assert quoting == [home], f'"{figure}" belongs on {home} alone (link to it from elsewhere); found on {quoting}'


# The pages a reader meets first quote no accuracy that FIGURES does not check.
CHECKED_PAGES = ("README.md", IX, GS)


@pytest.mark.parametrize("page", CHECKED_PAGES)
def test_every_percentage_on_the_front_pages_is_checked(page):
    text = page_text(page)
    checked = set()
    for fig in FIGURES:
        value = lookup(fig.source, fig.key)
        if fig.page == page and value is not MISSING:
            checked.add(FORMATS[fig.fmt](value))
    quoted = set(re.findall(r"\d+\.\d+ %", text))
    assert quoted - checked == set(), f"{page} quotes percentages no row of FIGURES checks"


def test_the_table_reads_the_committed_files():
    # Guards against the checks above passing because nothing was read.
    assert lookup(TRAIN, "test_accuracy") > 0.9 and lookup(TRAIN_R, "test.per_angle.0.n") > 0
    assert lookup("dvc.lock", "models/model.pt") is not MISSING
    assert {f.page for f in FIGURES} >= {"README.md", IX, GS, RS}
    assert duration(1020.8) == "17 min 1 s" and duration(240) == "4 min" and duration(25.4) == "25 s"
    assert angle(-30) == f"{MINUS}30°" and angle("30") == "+30°" and angle(0) == "0°"
