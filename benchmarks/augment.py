"""Benchmark of the augment stage: batched rotation vs a per-image scipy loop, and the whole stage's time and memory.

Usage: python -m benchmarks.augment [--raw data/raw] [--subset 2000] [--repeats 3] [--chunk-sizes 128 256 1024]
Uses data/raw if it exists, else 70,000 synthetic digits. Prints a markdown table; with --check, exits 1 if a
goal is missed (420k rotations <= 3 s, >= 10x the scipy loop, whole-stage peak RSS <= 2 GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.ndimage

from rotmnist.config import Config
from rotmnist.data import rotation
from rotmnist.data.dataset import MNIST_TEST, MNIST_TRAIN, Dataset, load_dataset, save_dataset
from rotmnist.paths import Paths
from rotmnist.spec import ALLOWED_ANGLES, ROTATION_CHUNK
from rotmnist.stages import augment

GOAL_SECONDS, GOAL_SPEEDUP, GOAL_RSS_MIB = 3.0, 10.0, 2048


def synthetic_mnist(n: int = 70_000, seed: int = 0) -> Dataset:
    """Random-ish digits: a few blurred random strokes inside the central 20x20 box, like MNIST's framing."""
    rng = np.random.default_rng(seed)
    canvas = np.zeros((n, 28, 28), np.float32)
    t = np.linspace(0, 1, 24, dtype=np.float32)
    for _ in range(3):  # three strokes per digit, each a straight line of 24 dots
        (r0, c0), (r1, c1) = rng.uniform(4, 23, size=(2, 2, n, 1))
        rows = np.rint(r0 + (r1 - r0) * t).astype(np.intp)
        cols = np.rint(c0 + (c1 - c0) * t).astype(np.intp)
        canvas[np.arange(n)[:, None], rows, cols] = 1.0
    canvas = scipy.ndimage.gaussian_filter(canvas, sigma=(0, 0.8, 0.8))
    x = np.clip(canvas / canvas.max(axis=(1, 2), keepdims=True) * 400, 0, 255).astype(np.uint8)
    n_test = n // 7
    return Dataset(
        x=x,
        y=rng.integers(0, 10, n).astype(np.uint8),
        source_id=np.arange(n, dtype=np.int32),
        angle=np.zeros(n, np.int8),
        mnist_split=np.where(np.arange(n) < n - n_test, MNIST_TRAIN, MNIST_TEST).astype(np.int8),
    )


def best_of(fn, repeats: int) -> float:
    """The fastest of `repeats` wall-clock timings of `fn()` (the machine is shared: the minimum is the signal)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run_stage(raw: Path) -> dict:
    """Run `augment.main` on `raw` in a fresh process; its wall time and peak RSS (ru_maxrss of the child)."""
    with tempfile.TemporaryDirectory(prefix="bench-augment-") as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        (root / "data" / "raw").symlink_to(raw.resolve())
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--stage-in", str(root)], check=True)
        wall = time.perf_counter() - start
        written = load_dataset(root / "data" / "augmented", mmap=True)
        n_written = len(written)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    return {"wall_s": wall, "peak_rss_mib": peak_kib / 1024, "images": n_written}


def stage_child(root: Path) -> None:
    """Child process body: the stage with the default config (exhaustive, every angle), no other work."""
    augment.main(Config(), Paths(root=root, store_root=root))


def per_image_loops(sub: np.ndarray, total: int) -> tuple[float, float]:
    """Seconds of a per-image scipy loop and of a per-image `rotation.rotate` loop, extrapolated to `total`."""
    k = len(ALLOWED_ANGLES)
    start = time.perf_counter()
    for angle in ALLOWED_ANGLES:
        for image in sub:
            scipy.ndimage.rotate(image, angle, reshape=False, order=1)
    scipy_loop = (time.perf_counter() - start) / (len(sub) * k) * total
    start = time.perf_counter()
    for angle in ALLOWED_ANGLES:
        for image in sub:
            rotation.rotate(image, angle)
    rotate_loop = (time.perf_counter() - start) / (len(sub) * k) * total
    return scipy_loop, rotate_loop


def print_rows(rows: list[tuple[str, float, str]], total: int, scipy_loop: float) -> None:
    print("| method | time (s) | images/s | speed-up vs scipy loop | how |")
    print("|---|---:|---:|---:|---|")
    for name, t, how in rows:
        print(f"| {name} | {t:.2f} | {total / t:,.0f} | {scipy_loop / t:.1f}x | {how} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="raw dataset folder (else synthetic)")
    parser.add_argument("--subset", type=int, default=2000, help="images per angle in the per-image loops")
    parser.add_argument("--repeats", type=int, default=3, help="timings per batched measurement (best is kept)")
    parser.add_argument("--chunk-sizes", type=int, nargs="*", default=[], help="also time these chunk sizes")
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal is missed")
    parser.add_argument("--stage-in", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage_in:
        stage_child(args.stage_in)
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-raw-") as tmp:
        if (args.raw / "x.npy").is_file():
            raw_dir, source = args.raw, f"MNIST from {args.raw}"
        else:
            raw_dir, source = Path(tmp) / "raw", "synthetic digits (data/raw not found)"
            save_dataset(synthetic_mnist(), raw_dir)
        raw = load_dataset(raw_dir)
        n, k = len(raw), len(ALLOWED_ANGLES)
        total = n * k
        sub = raw.x[: args.subset]
        print(f"data: {n:,} images, {source}; {os.cpu_count()} CPUs, {rotation.default_workers()} rotation threads")

        batched = best_of(lambda: rotation.exhaustive_dataset(raw), args.repeats)
        sweep = {
            size: best_of(lambda size=size: rotation.exhaustive_dataset(raw, chunk_size=size), args.repeats)
            for size in args.chunk_sizes
        }
        scipy_loop, rotate_loop = per_image_loops(sub, total)
        stage = run_stage(raw_dir)

    rows = [
        (f"batched exhaustive_dataset (chunk {ROTATION_CHUNK}, best of {args.repeats})", batched, "measured"),
        *(
            (f"batched exhaustive_dataset (chunk {size}, best of {args.repeats})", t, "measured")
            for size, t in sweep.items()
        ),
        ("per-image scipy.ndimage.rotate(order=1) loop", scipy_loop, f"{len(sub) * k:,} timed, extrapolated"),
        ("per-image rotation.rotate loop", rotate_loop, f"{len(sub) * k:,} timed, extrapolated"),
    ]
    print(f"\n{total:,} rotations ({n:,} images x {k} angles)\n")
    print_rows(rows, total, scipy_loop)
    print(
        f"\nwhole stage (fresh process: load {n:,} + rotate + save {stage['images']:,} images): "
        f"{stage['wall_s']:.1f} s wall incl. interpreter start, peak RSS {stage['peak_rss_mib']:,.0f} MiB"
    )
    goals = {
        f"420k rotations <= {GOAL_SECONDS} s": batched <= GOAL_SECONDS,
        f">= {GOAL_SPEEDUP:.0f}x the scipy loop": scipy_loop / batched >= GOAL_SPEEDUP,
        f"stage peak RSS <= {GOAL_RSS_MIB} MiB": stage["peak_rss_mib"] <= GOAL_RSS_MIB,
    }
    print("goals: " + json.dumps({g: "met" if ok else "MISSED" for g, ok in goals.items()}))
    return 1 if args.check and not all(goals.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
