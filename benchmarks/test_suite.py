"""The test suite on a clean clone: `make test` as CI runs it, its counts and times, and the machine.

Usage: python -m benchmarks.test_suite [--repo .] [--out benchmarks/results/test_suite.json] [--keep]

Clones the repository's committed HEAD (`git clone`, so nothing uncommitted, no `.venv`, no data) into
a temporary folder and runs CI's own command there, `bash .ci/run`, which runs `make test`: the
creation of `.venv`, then the whole suite with its coverage summary. Parses pytest's summary line
(`=== 856 passed, 2 skipped in 1461.23s (0:24:21) ===`) and its `SKIPPED` lines, and writes the
figures as JSON: passed, skipped, failed (failures and errors), pytest's `seconds`, `make_seconds`
for the whole command, the skip reasons, and the CPU. docs/getting-started.md quotes them, and
tests/unit/test_figures.py checks the quote against the file. About 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# `=== 1 failed, 855 passed, 2 skipped, 3 warnings in 1461.23s (0:24:21) ===`
SUMMARY = re.compile(r"^=+ (?P<counts>.*?) in (?P<seconds>[\d.]+)s\b.*=+$", re.MULTILINE)
COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?)")
# `SKIPPED [1] tests/unit/test_gpu.py:12: needs CUDA` (pytest's -ra report, which the project's addopts ask for)
SKIPPED = re.compile(r"^SKIPPED \[(\d+)\] (.+?): (.*)$", re.MULTILINE)


def cpu() -> dict[str, object]:
    """The CPU's model name, its cores and whether it has AVX512-BF16 (what `train.precision: auto` looks for)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", info, re.MULTILINE)
    return {
        "cpu": model.group(1).strip() if model else platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "avx512_bf16": bool(flags and "avx512_bf16" in flags.group(1).split()),
    }


def summary(output: str) -> dict[str, object]:
    """The counts and seconds of pytest's last summary line, and the skip reasons; ValueError if there is none."""
    lines = SUMMARY.findall(output)
    if not lines:
        raise ValueError("no pytest summary line in the output")
    counts_text, seconds = lines[-1]
    counts = {
        kind.removesuffix("s") if kind in ("errors", "warnings") else kind: int(n)
        for n, kind in COUNT.findall(counts_text)
    }
    skips = [{"count": int(n), "where": where, "reason": reason} for n, where, reason in SKIPPED.findall(output)]
    return {
        "passed": counts.get("passed", 0),
        "skipped": counts.get("skipped", 0),
        "failed": counts.get("failed", 0) + counts.get("error", 0),
        "seconds": round(float(seconds), 1),
        "skip_reasons": skips,
    }


def run_suite(clone: Path, log: Path) -> tuple[int, float, str]:
    """Run `bash .ci/run` in the clone, echoing its output; (exit status, seconds, output)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MLFLOW_TRACKING_URI", "PYTHONPATH")}
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["bash", ".ci/run"], cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            out.write(line)
        status = proc.wait()
    return status, time.perf_counter() - start, log.read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="the repository to clone (its committed HEAD)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/test_suite.json", help="the JSON")
    parser.add_argument("--keep", action="store_true", help="keep the clone (and its make-test.log) afterwards")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rotmnist-test-suite-"))
    tmp.chmod(0o755)  # as a clone usually lies: the container test's non-root user reads the clone's venv
    clone = tmp / "rotmnist"
    try:
        subprocess.run(["git", "clone", "--quiet", str(args.repo.resolve()), str(clone)], check=True)
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=clone, check=True, capture_output=True, text=True
        ).stdout.strip()
        status, seconds, output = run_suite(clone, tmp / "make-test.log")
        venv_python = subprocess.run(
            [str(clone / ".venv/bin/python"), "-c", "import platform; print(platform.python_version())"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        figures = summary(output)
    except ValueError as err:
        sys.exit(f"test_suite.py: {err}; `bash .ci/run` exited {status} (its output is above)")
    result = {
        **figures,
        "make_seconds": round(seconds, 1),
        "exit_status": status,
        "command": "bash .ci/run (make test) in a clean git clone",
        "commit": commit,
        "python": venv_python,
        **cpu(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\n{result['passed']} passed, {result['skipped']} skipped, {result['failed']} failed in "
        f"{result['seconds']:.0f} s (make test: {result['make_seconds']:.0f} s) on {result['cpu']}, "
        f"{result['cores']} cores; written to {args.out}"
    )
    if args.keep:
        print(f"the clone and its log: {tmp}")


if __name__ == "__main__":
    main()
