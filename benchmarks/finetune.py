"""The loop's fine-tune levers side by side, offline: how far each setting moves 60° and the trained angles.

Usage: python -m benchmarks.finetune [--repo .] [--angle 60] [--max-corrections 3000] [--precision fp32]
                                     [--only default lr1e-3-w1 ...] [--blends 0.4 0.5 ...]

Needs a repository whose pipeline has run up to `train` (models/model.pt, run.json, best_params.json and
data/splits). The corrections are those `benchmarks/loop.py` collects, without a server: train-split digits
(their upright rows in the loop's seeded order) turned by `--angle`, the ones train's model misreads, up to
`--max-corrections`; a seeded fifth of them is held out (the feedback slice), the rest fine-tuned on.
Each variant is one fine-tune (`rotmnist.stages.finetune`'s recipe with its `finetune.*` settings changed),
scored at several blends with train's weights (`finetune.blend`; `--blends` to choose them), each pooling as
train's model does (`model.*`, as the stage's candidate): test accuracy at `--angle` (all 10,000
test digits), on the held-out corrections, and the change per trained angle on test and holdout against
train's model. A fine-tune takes about 30 s on 2 CPU cores. Prints a markdown table (docs/loop.md's
levers table comes from it); `meets` is the loop's goal: ≥ 97 % at the angle, every trained angle within
0.1 points on test and on holdout.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.loop import rotated
from rotmnist.config import load_config
from rotmnist.data import feedback
from rotmnist.data.dataset import Dataset, load_dataset
from rotmnist.learning.device import apply_threads, resolve_device
from rotmnist.learning.model import load_pipeline_model, predict_labels, serving_copy
from rotmnist.learning.recipe import read_best_params
from rotmnist.learning.training import fit
from rotmnist.stages.finetune import blended, finetune_hyper, per_angle, test_change

GOAL_ACCURACY, GOAL_DROP = 97.0, 0.1  # at the unseen angle (%); the most a trained angle may lose (points)

REPLAY_ONLY = "replay_only"  # a control: the same fine-tune on the train split alone, no correction
# name: (finetune.* settings, the blends scored). "default" is params.yaml's.
VARIANTS: dict[str, tuple[dict, tuple[float, ...]]] = {
    "replay-only-lr1e-3": ({"lr": 1e-3, "feedback_weight": 1.0, REPLAY_ONLY: True}, (1.0,)),
    "lr1e-4-w4": ({"lr": 1e-4, "feedback_weight": 4.0}, (1.0,)),
    "lr3e-4-w1": ({"lr": 3e-4, "feedback_weight": 1.0}, (1.0,)),
    "lr3e-4-w4": ({"lr": 3e-4, "feedback_weight": 4.0}, (1.0,)),
    "lr3e-4-w1-4-epochs": ({"lr": 3e-4, "feedback_weight": 1.0, "epochs": 4}, (1.0,)),
    "lr3e-4-w1-6-epochs": ({"lr": 3e-4, "feedback_weight": 1.0, "epochs": 6}, (0.7, 1.0)),
    "lr1e-3-w1": ({"lr": 1e-3, "feedback_weight": 1.0}, (0.3, 0.5, 0.6, 0.7, 0.8, 1.0)),
    "lr1e-3-w2": ({"lr": 1e-3, "feedback_weight": 2.0}, (0.5, 0.6, 1.0)),
    "lr1e-3-w4-4-epochs": ({"lr": 1e-3, "feedback_weight": 4.0, "epochs": 4}, (0.3, 0.4, 0.5, 1.0)),
    "lr1e-3-w0.5": ({"lr": 1e-3, "feedback_weight": 0.5}, (0.8, 1.0)),
    "lr2e-3-w0.5": ({"lr": 2e-3, "feedback_weight": 0.5}, (0.6, 0.7, 1.0)),
    "lr2e-3-w0.25": ({"lr": 2e-3, "feedback_weight": 0.25}, (0.7, 0.8, 0.9, 1.0)),
    "default": ({}, (0.5, 0.7, 1.0)),  # lr 3e-3, weight 0.5; params.yaml blends at 0.5
}


def corrections(model, train: Dataset, angle: float, most: int, seed: int = 0) -> tuple[Dataset, Dataset]:
    """The loop's corrections without a server: (fine-tuned on, held out), as dataset rows of people's labels."""
    upright = np.flatnonzero(train.angle == 0)
    order = np.random.default_rng(seed).permutation(upright)  # the loop's stream (benchmarks/loop.py --seed 0)
    xs, ys = [], []
    for i in range(0, len(order), 2048):
        idx = order[i : i + 2048]
        x, y = rotated(train.x[idx], angle), train.y[idx]
        wrong = predict_labels(model, x) != y
        xs.append(x[wrong])
        ys.append(y[wrong])
        if sum(map(len, xs)) >= most:
            break
    x, y = np.concatenate(xs)[:most], np.concatenate(ys)[:most]
    n = len(y)
    order = np.arange(n, dtype=np.float64)  # scored and corrected in stream order: the rows keep it
    rows = feedback.corrections(x, y, [f"{i:032x}" for i in range(n)], order, order).data
    held = np.random.default_rng(seed + 1).random(n) < 0.2
    return rows.take(~held), rows.take(held)


def scores(model, test: Dataset, holdout: Dataset, unseen: tuple[np.ndarray, np.ndarray], held: Dataset) -> dict:
    """Accuracy per trained angle on test and holdout (the finetune stage's), at the unseen angle and on the
    held-out corrections (%)."""
    out = {"test": per_angle(model, test), "holdout": per_angle(model, holdout)}
    out["unseen"] = 100 * float((predict_labels(model, unseen[0]) == unseen[1]).mean())
    out["held"] = 100 * float((predict_labels(model, held.x) == held.y).mean())
    return out


def worst(before: dict, after: dict) -> tuple[float, int]:
    """The largest change down in points (negative; the smallest angle on a tie) and its angle."""
    change = test_change(before, after)["per_angle"]
    angle = min(change, key=lambda a: (change[a], int(a)))
    return change[angle], int(angle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path.cwd())
    parser.add_argument("--angle", type=float, default=60.0)
    parser.add_argument("--max-corrections", type=int, default=3000)
    parser.add_argument("--precision", default=None, help="train.precision for the fine-tunes (default: params)")
    parser.add_argument("--only", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--blends", nargs="*", type=float, help="the blends to score (default: each variant's)")
    args = parser.parse_args()
    repo = args.repo.resolve()
    config = load_config(repo / "params.yaml")
    apply_threads(config.train.num_threads)
    if args.precision:
        config = config.model_copy(update={"train": config.train.model_copy(update={"precision": args.precision})})
    base, _ = load_pipeline_model(repo / "models/model.pt", repo / "models/run.json")
    spec, tuned, _ = read_best_params(repo / "models/best_params.json")
    splits = {s: load_dataset(repo / "data/splits" / s) for s in ("train", "test", "holdout")}
    train, test, holdout = splits["train"], splits["test"], splits["holdout"]
    learn, held = corrections(base, train, args.angle, args.max_corrections)
    up = test.angle == 0
    unseen = (rotated(test.x[up], args.angle), test.y[up])
    before = scores(base, test, holdout, unseen, held)
    print(f"train's model: {before['unseen']:.2f} % at {args.angle:g} deg; {len(learn)} corrections, {len(held)} held")
    print(
        f"\n| variant | blend | seconds | {args.angle:g} deg | held-out corrections | worst test change | "
        "worst holdout change | meets |\n|---|---:|---:|---:|---:|---:|---:|---|"
    )
    device, mix = resolve_device(config.train.device), Dataset.concat([train, learn])
    for name in args.only:
        settings, blends = VARIANTS[name]
        ft = config.finetune.model_copy(update={k: v for k, v in settings.items() if k != REPLAY_ONLY})
        hp = finetune_hyper(config.model_copy(update={"finetune": ft}), tuned)
        start = time.perf_counter()
        rows = train if settings.get(REPLAY_ONLY) else mix
        fitted = serving_copy(fit(spec, rows, None, hp, device=device, seed=ft.seed, init=base).model)
        seconds = time.perf_counter() - start
        for share in args.blends or blends:
            after = scores(blended(base, fitted, share).pool(base.pooling), test, holdout, unseen, held)
            (dt, at), (dh, ah) = worst(before["test"], after["test"]), worst(before["holdout"], after["holdout"])
            meets = after["unseen"] >= GOAL_ACCURACY and min(dt, dh) >= -GOAL_DROP - 1e-9
            print(
                f"| {name} | {share:g} | {seconds:.0f} | {after['unseen']:.2f} % | {after['held']:.2f} % | "
                f"{dt:+.2f} ({at:+d}°) | {dh:+.2f} ({ah:+d}°) | {'yes' if meets else 'no'} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
