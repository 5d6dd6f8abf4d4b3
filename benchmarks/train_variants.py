"""Training recipes side by side: images processed, minutes, and test/holdout accuracy per angle of each.

Usage: python -m benchmarks.train_variants [--only one-rotation-ema-50 ...] [--precision bf16] [--threads 2]
                                           [--ensemble]
Needs data/splits (run `dvc repro split` first). Each variant trains the default CNN on the whole train split
(from scratch, seed 0) and is scored on the test and holdout splits; a variant takes 5-20 minutes on 2 CPU
cores, so pick some with --only. Prints a markdown table (docs/results.md, "Training recipes tried", comes from it).
With --ensemble a last row scores the average of the variants' probabilities: what the variants' whole
training time buys together.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from rotmnist.data.dataset import Dataset, load_dataset
from rotmnist.learning.metrics import slice_metrics
from rotmnist.learning.model import predict_proba
from rotmnist.learning.recipe import Hyper
from rotmnist.learning.training import fit
from rotmnist.paths import Paths

SPEC = {"family": "cnn", "blocks": 3, "channels": 16, "kernel": 5, "dense": 256, "dropout": 0.19}
BASE = {"lr": 0.0063, "weight_decay": 1.2e-5, "batch_size": 256, "label_smoothing": 0.05, "shift": 2}

# name: (spec changes, Hyper settings). "all-rotations-16" is the recipe before one rotation per epoch.
ONE_ROTATION_EMA = {"rotations_per_epoch": 1, "ema": 0.999}  # the pipeline's way of drawing epochs and weights
VARIANTS: dict[str, tuple[dict, dict]] = {
    "all-rotations-16": ({}, {"epochs": 16, "rotations_per_epoch": 0, "ema": 0.0}),
    "one-rotation-ema-50": ({}, ONE_ROTATION_EMA | {"epochs": 50}),
    "one-rotation-ema-65": ({}, ONE_ROTATION_EMA | {"epochs": 65}),
    "one-rotation-ema-50-lr3e-3-wd1e-4": ({}, ONE_ROTATION_EMA | {"epochs": 50, "lr": 0.003, "weight_decay": 1e-4}),
    "3x3-kernels-one-rotation-ema-70": ({"kernel": 3}, ONE_ROTATION_EMA | {"epochs": 70}),
    "3x3-c32-one-rotation-ema-40": ({"kernel": 3, "channels": 32}, ONE_ROTATION_EMA | {"epochs": 40}),
    # Two 3x3 convolutions per block instead of one 5x5: the most accurate, at 1.3x the training time.
    "3x3-pairs-one-rotation-ema-40": ({"kernel": 3, "convs_per_block": 2}, ONE_ROTATION_EMA | {"epochs": 40}),
}


def row(name: str, images: str, minutes: str, probs: dict[str, np.ndarray], splits: dict[str, Dataset]) -> str:
    """One table row: test upright and worst angle, holdout worst angle, of the predicted probabilities."""
    accuracy = {}
    for split in ("test", "holdout"):
        ds = splits[split]
        report = slice_metrics(ds.y, probs[split].argmax(axis=1), ds.angle)
        accuracy[split] = {a: m["accuracy"] for a, m in report["per_angle"].items()}
    on_test, on_holdout = accuracy["test"], accuracy["holdout"]
    worst, worst_h = min(on_test, key=on_test.get), min(on_holdout, key=on_holdout.get)
    return (
        f"| {name} | {images} | {minutes} | {on_test['0']:.2%} | "
        f"{on_test[worst]:.2%} ({worst}°) | {on_holdout[worst_h]:.2%} ({worst_h}°) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ensemble", action="store_true", help="add a row for the average of the variants")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = Paths.here()
    train = load_dataset(paths.split("train"))
    splits = {s: load_dataset(paths.split(s)) for s in ("test", "holdout")}
    summed = {s: 0.0 for s in splits}
    total_minutes = 0.0
    print("| recipe | images | minutes | test upright | test worst angle | holdout worst angle |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.only:
        spec_changes, settings = VARIANTS[name]
        hp = Hyper(**(BASE | settings), precision=args.precision)
        start = time.perf_counter()
        fitted = fit(SPEC | spec_changes, train, None, hp, seed=args.seed, desc=name)
        minutes = (time.perf_counter() - start) / 60
        images = sum(m["epoch_images"] for m in fitted.history)
        probs = {split: predict_proba(fitted.model, ds.x) for split, ds in splits.items()}
        summed = {split: summed[split] + p for split, p in probs.items()}
        total_minutes += minutes
        print(row(name, f"{images / 1e6:.2f} M", f"{minutes:.1f}", probs, splits), flush=True)
    if args.ensemble and len(args.only) > 1:
        print(row(f"ensemble of the {len(args.only)} above", "—", f"{total_minutes:.1f}", summed, splits))
    print(f"\n{args.precision}, {torch.get_num_threads()} threads, seed {args.seed}")


if __name__ == "__main__":
    main()
