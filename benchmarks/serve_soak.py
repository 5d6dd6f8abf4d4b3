"""Soak of `rotmnist serve`: the real server under a sustained mixed load while a new champion is promoted.

Usage: python -m benchmarks.serve_soak [--seconds 300] [--concurrency 16] [--promote-every 30] [--window 30] [--check]

The server is the venv's `rotmnist serve` in a subprocess, in a throwaway workspace: a temp folder with its own
SQLite MLflow store whose champion is the template-matching model of tests/support/serving.py. So the soak runs
on a fresh clone without `make repro`, every answer can be checked (the digits sent are drawn, hence known),
and the promotions never touch the repository's registry (a 5-minute run promotes ten times). A promotion
registers the champion's logged model once more as a new version and moves the alias to it; the server,
polling every second (`serve.poll_seconds: 1`), loads it as it would any new champion.

The load comes from one asyncio client (aiohttp, installed with mlflow) keeping `--concurrency` requests in
flight, over a fixed cycle: JSON batches of 8 digits, single digits (`/score` and `/invocations`), uploads
(multipart and a raw `image/png` body) and malformed bodies, each with the answer it must get (the digits, or
the documented 4xx). A Python client rather than `wrk`/`hey`: it mixes the kinds, checks every answer and the
model version that gave it, and runs wherever the tests run: the soak lives in tests/support/soak.py (its
mix and report in soak_mix.py), and tests/integration/test_serve_soak.py is a 20 s run of it. It shares the
CPU with the server, so the request rate is the pair's, not the server's.

Prints a markdown row per window (requests, 4xx, 5xx, p50/p99, the server's RSS from /proc, the champion
versions first seen in answers) and a summary with the goals: no 5xx, RSS growth under 10 % after warm-up
(the baseline is taken after the first 10 % of the run), the last minute's p99 within 1.5x of the first
minute's (shorter runs compare their first and last third), every answer as expected. `--check`: exit 1 if
a goal is missed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from tests.support.soak import soak
from tests.support.soak_mix import Report, Window


def print_window(w: Window) -> None:
    rate = w.requests / (w.end - w.start) if w.end > w.start else 0.0
    print(
        f"| {w.start:.0f}–{w.end:.0f} | {w.requests:,} | {rate:,.0f} | {w.client_errors:,} | {w.server_errors} "
        f"| {w.unanswered} | {w.p50_ms:.1f} | {w.p99_ms:.1f} | {w.rss_mib:.0f} | {', '.join(w.versions)} |",
        flush=True,
    )


def print_summary(report: Report) -> None:
    print("\n| kind | requests | statuses |\n|---|---:|---|")
    for kind, counts in report.by_kind().items():
        statuses = ", ".join(f"{s or 'none'}: {n:,}" for s, n in sorted(counts.items()))
        print(f"| {kind} | {sum(counts.values()):,} | {statuses} |")
    lags = [report.seen[v] - t for t, v in report.promoted if v in report.seen]
    lag = f" (first answer {min(lags):.1f}–{max(lags):.1f} s after the promotion)" if lags else ""
    print(
        f"\nRequests: {report.requests:,} in {report.seconds:.0f} s ({report.requests / report.seconds:,.0f}/s). "
        f"Promotions: {len(report.promoted)}; new versions seen in answers: {len(report.seen) - 1}{lag}; "
        f"reloads in the server's log: {report.logged_reloads}; errors in its log: {len(report.log_errors)}. "
        f"Server RSS: {report.rss[0][1]:.0f} MiB before the load, {report.rss_baseline:.0f} MiB after warm-up, "
        f"{report.rss[-1][1]:.0f} MiB at the end. CPU during the load: server {report.cpu['server']:.0f} s, "
        f"client {report.cpu['client']:.0f} s."
    )
    for line in report.log_errors[:5]:
        print(f"    {line}")
    print("\n| goal | target | result | |\n|---|---|---|---|")
    for goal, target, result, met in report.goals():
        print(f"| {goal} | {target} | {result} | {'PASS' if met else 'MISS'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300, help="length of the load")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--promote-every", type=float, default=30, help="seconds between promotions")
    parser.add_argument("--window", type=float, default=30, help="seconds per row of the table")
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal is missed")
    args = parser.parse_args()

    print(
        f"Load: one asyncio client, {args.concurrency} requests in flight, a promotion every "
        f"{args.promote_every:g} s, {args.seconds:g} s; {os.cpu_count()} CPU cores shared by client and server.\n"
    )
    print(
        "| window (s) | requests | req/s | 4xx | 5xx | unanswered | p50 (ms) | p99 (ms) | server RSS (MiB) "
        "| new champion seen |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory(prefix="serve-soak-") as tmp:
        report = soak(
            Path(tmp), args.seconds, args.concurrency, args.promote_every, args.window, on_window=print_window
        )
    print_summary(report)
    if args.check and not all(met for *_, met in report.goals()):
        sys.exit(1)


if __name__ == "__main__":
    main()
