"""The soak's request mix and what it saw: each request with the answer it must get, and the run's windows and goals.

Shared by the soak benchmark (`python -m benchmarks.serve_soak`) and its shortened run in the integration tests.
"""

from __future__ import annotations

import json
import os
import re
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tests.support.serving import drawing, multipart, png_bytes, prepared

NAME = "digits"  # the registered model of the throwaway store
MAX_IMAGES = 16  # serve.max_images: the malformed "too many images" request stays small
JSON = "application/json"
WARM_UP = 0.10  # share of the run before the RSS baseline
SPAN = 60.0  # seconds of the first and the last minute compared by p99


@dataclass(frozen=True)
class Shot:
    """One request of the mix and the answer it must get: these digits (status 200), or this error status."""

    name: str  # "kind" or "kind:variant"
    path: str
    body: bytes
    content_type: str
    digits: tuple[int, ...] = ()
    status: int = 200


def mix() -> list[Shot]:
    """The cycle of requests the clients send: per 10, 3 batches, 3 single digits, 2 uploads, 2 malformed."""

    def body(data: object) -> bytes:
        return json.dumps(data).encode()

    def images(*digits: int) -> list:
        return [prepared(d).tolist() for d in digits]

    upload, upload_type = multipart(
        [("file", "four.png", png_bytes(drawing(4))), ("file", "nine.png", png_bytes(drawing(9)))]
    )
    junk, junk_type = multipart([("file", "junk.png", b"\x89PNG not really")])
    batch = Shot("batch", "/score", body({"images": images(*range(8))}), JSON, tuple(range(8)))
    single = [
        Shot("single", "/score", body({"images": images(3)}), JSON, (3,)),
        Shot("single:invocations", "/invocations", body({"inputs": images(8)}), JSON, (8,)),
    ]
    uploads = [
        Shot("upload", "/score", upload, upload_type, (4, 9)),
        Shot("upload:raw", "/score", png_bytes(drawing(2)), "image/png", (2,)),
    ]
    blank = np.zeros((28, 28), int).tolist()
    malformed = [
        Shot("malformed:json", "/score", b'{"images": [[[0, 0', JSON, status=400),
        Shot("malformed:shape", "/score", body({"images": [blank[:27]]}), JSON, status=422),
        Shot("malformed:too-many", "/score", body({"images": [blank] * (MAX_IMAGES + 1)}), JSON, status=413),
        Shot("malformed:type", "/score", b"1,2,3", "text/csv", status=415),
        Shot("malformed:upload", "/score", junk, junk_type, status=400),
        Shot("malformed:invocations", "/invocations", body({"dataframe_split": "x"}), JSON, status=422),
    ]
    rounds = []
    for i in range(3):  # 3 rounds of 10 go through the 6 malformed bodies once
        single_a, single_b = single[i % 2], single[(i + 1) % 2]
        bad_a, bad_b = malformed[2 * i], malformed[2 * i + 1]
        rounds += [batch, single_a, uploads[0], batch, single_b, bad_a, batch, single_a, uploads[1], bad_b]
    return rounds


def judge(shot: Shot, status: int, raw: bytes) -> tuple[bool, str | None]:
    """Whether the answer is the one `shot` must get, and the model version it names (`/score` only)."""
    if shot.status != 200 or status != 200:
        return status == shot.status, None
    try:
        answer = json.loads(raw)
        if shot.path == "/invocations":
            return tuple(int(np.argmax(p)) for p in answer["predictions"]) == shot.digits, None
        return tuple(p["digit"] for p in answer["predictions"]) == shot.digits, answer["model"]["version"]
    except (ValueError, KeyError, TypeError):  # not the answer's schema: wrong, and the soak goes on
        return False, None


def rss_mib(pid: int) -> float:
    """The resident memory of process `pid` (VmRSS of /proc/<pid>/status), in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)[1]) / 1024


def cpu_seconds(pid: int) -> float:
    """The CPU time process `pid` has used (user + system, from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


@dataclass
class Answers:
    """Every answer of the run in the order they came, as compact arrays (a 5-minute run holds ~400k)."""

    end: array = field(default_factory=lambda: array("d"))  # seconds since the start of the load
    latency: array = field(default_factory=lambda: array("d"))  # seconds
    status: array = field(default_factory=lambda: array("H"))  # 0: no answer (connection error, timeout)
    shot: array = field(default_factory=lambda: array("H"))  # index into the mix
    right: array = field(default_factory=lambda: array("B"))

    def add(self, end: float, latency: float, status: int, shot: int, right: bool) -> None:
        self.end.append(end)
        self.latency.append(latency)
        self.status.append(status)
        self.shot.append(shot)
        self.right.append(right)


@dataclass(frozen=True)
class Window:
    """The answers that came between `start` and `end` (seconds into the load)."""

    start: float
    end: float
    requests: int
    client_errors: int
    server_errors: int
    unanswered: int
    wrong: int
    p50_ms: float
    p99_ms: float
    rss_mib: float
    versions: tuple[str, ...]  # champion versions first seen in an answer in this window


def window(answers: Answers, lo: int, hi: int, start: float, end: float, rss: float, versions) -> Window:
    """Sum up answers[lo:hi]."""
    status = np.asarray(answers.status[lo:hi])
    latency = np.asarray(answers.latency[lo:hi]) * 1e3
    p50, p99 = np.percentile(latency, [50, 99]) if len(latency) else (float("nan"), float("nan"))
    return Window(
        start,
        end,
        requests=hi - lo,
        client_errors=int(((status >= 400) & (status < 500)).sum()),
        server_errors=int((status >= 500).sum()),
        unanswered=int((status == 0).sum()),
        wrong=int((np.asarray(answers.right[lo:hi]) == 0).sum()),
        p50_ms=float(p50),
        p99_ms=float(p99),
        rss_mib=rss,
        versions=tuple(versions),
    )


@dataclass
class Report:
    """What a soak saw: per window, per request, of the promotions and of the server's memory and log."""

    seconds: float
    concurrency: int
    mix: list[Shot]
    answers: Answers
    windows: list[Window]
    rss: list[tuple[float, float]]  # (seconds into the load, MiB); the first is before the load
    promoted: list[tuple[float, str]]  # (seconds into the load when the promotion began, version)
    seen: dict[str, float]  # champion version -> seconds into the load of its first answer
    logged_reloads: int  # "now serving" lines in the server's log
    log_errors: list[str]  # ERROR lines and tracebacks in the server's log
    cpu: dict[str, float]  # CPU seconds of the server and of the client during the load

    @property
    def requests(self) -> int:
        return len(self.answers.end)

    @property
    def server_errors(self) -> int:
        return sum(w.server_errors for w in self.windows)

    @property
    def unanswered(self) -> int:
        return sum(w.unanswered for w in self.windows)

    @property
    def wrong(self) -> int:
        return sum(w.wrong for w in self.windows)

    def statuses(self) -> dict[str, Counter]:
        """Per request name of the mix: how many answers had each status."""
        counts: dict[str, Counter] = {shot.name: Counter() for shot in self.mix}
        for i, status in zip(self.answers.shot, self.answers.status, strict=True):
            counts[self.mix[i].name][status] += 1
        return counts

    def by_kind(self) -> dict[str, Counter]:
        """Per kind (batch, single, upload, malformed): how many answers had each status."""
        kinds: dict[str, Counter] = {}
        for name, counts in self.statuses().items():
            kinds.setdefault(name.split(":")[0], Counter()).update(counts)
        return kinds

    @property
    def rss_baseline(self) -> float:
        """The server's RSS after warm-up: the first sample after WARM_UP of the run."""
        return next(mib for t, mib in self.rss if t >= WARM_UP * self.seconds)

    @property
    def rss_growth(self) -> float:
        return self.rss[-1][1] / self.rss_baseline - 1

    @property
    def span(self) -> float:
        """The seconds at each end of the run whose p99 are compared: a minute, or a third of a short run."""
        return min(SPAN, self.seconds / 3)

    def p99_ms(self, start: float, end: float) -> float:
        end_times = np.asarray(self.answers.end)
        latency = np.asarray(self.answers.latency)[(end_times >= start) & (end_times < end)]
        return float(np.percentile(latency, 99) * 1e3)

    def goals(self) -> list[tuple[str, str, str, bool]]:
        """(goal, target, result, met) of each goal of the soak."""
        first, last = self.p99_ms(0, self.span), self.p99_ms(self.seconds - self.span, float("inf"))
        return [
            (
                "5xx answers (and requests left unanswered)",
                "0",
                f"{self.server_errors} ({self.unanswered})",
                self.server_errors + self.unanswered == 0,
            ),
            (
                f"server RSS growth after warm-up ({self.rss_baseline:.0f} MiB at {WARM_UP * 100:.0f} % of the run)",
                "< 10 %",
                f"{self.rss_growth * 100:+.1f} %",
                self.rss_growth < 0.10,
            ),
            (
                f"p99 of the last {self.span:.0f} s / of the first {self.span:.0f} s",
                "≤ 1.5x",
                f"{last / first:.2f}x ({last:.1f} / {first:.1f} ms)",
                last <= 1.5 * first,
            ),
            (
                "answers as expected (the right digits, the documented 4xx)",
                "all",
                f"{self.requests - self.wrong:,} of {self.requests:,}",
                self.wrong == 0,
            ),
        ]
