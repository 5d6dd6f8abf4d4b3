"""Sweep throughput with 1..N parallel `rotmnist tune` workers on one PostgreSQL study, and the time a dead
worker's trial waits for its retry.

Usage: make postgres && python -m benchmarks.sweep_workers --storage postgresql://postgres@127.0.0.1:5433/optuna \\
           --tracking postgresql://postgres@127.0.0.1:5433/mlflow [--workers 1 2 3] [--trials-per-worker 6]
Each run works in a fresh temporary workspace on synthetic digits (160 train / 40 val images, a one-block CNN,
`--epochs` per trial: tiny trials, so the figures measure the coordination, not the training) and its own
study and experiment. Trials per minute count finished trials between the first trial's start and the last
one's end (process start-up excluded). The kill run SIGKILLs one of two workers mid-trial and reports the
seconds from its death to the start of the retry of its trial (heartbeat 1 s, grace period 3 s).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import yaml
from optuna.trial import TrialState

from rotmnist.data.dataset import Dataset, save_dataset
from rotmnist.paths import Paths
from rotmnist.tracking import tune_storage

ROTMNIST = str(Path(sys.executable).parent / "rotmnist")


def synthetic_splits(root: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name, n in (("train", 160), ("val", 40)):
        y = (np.arange(n) % 10).astype(np.uint8)
        x = (rng.random((n, 28, 28)) < 0.1).astype(np.uint8) * 200
        x[np.arange(n), 4 + 2 * y, :] = 255  # one bright row per class: learnable
        zeros = np.zeros(n, np.int8)
        ds = Dataset(x=x, y=y, source_id=np.arange(n, dtype=np.int32), angle=zeros, mnist_split=zeros)
        save_dataset(ds, root / "data" / "splits" / name)


def workspace(n_trials: int, epochs: int) -> tuple[Path, str]:
    root = Path(tempfile.mkdtemp(prefix="rotmnist-bench-"))
    synthetic_splits(root)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    params = {
        "tune": {
            "n_trials": n_trials,
            "epochs": epochs,
            "train_fraction": 1.0,
            "val_fraction": 1.0,
            "pruner": "none",
            "study_name": name,
            "heartbeat_interval": 1,
            "grace_period": 3,
            "space": {"batch_size": [32], "cnn": {"blocks": [1], "channels": [4], "kernel": [3], "dense": [16, 32]}},
        },
        "train": {"shift": 0, "num_threads": 1, "device": "cpu"},
        "mlflow": {"experiment": name},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "dvc.yaml").write_text("stages: {}\n")
    return root, name


def start(root: Path, n: int, storage: str, tracking: str) -> list[subprocess.Popen]:
    env = os.environ | {"TQDM_DISABLE": "1", tune_storage.STORAGE_ENV: storage, "MLFLOW_TRACKING_URI": tracking}
    return [
        subprocess.Popen([ROTMNIST, "tune"], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(n)
    ]


def study_of(root: Path, name: str, storage: str) -> optuna.Study:
    paths = Paths(root=root, store_root=root)
    full = [
        s for s in optuna.get_all_study_names(tune_storage.open_storage(storage, paths)) if s.startswith(f"{name}-")
    ]
    return optuna.load_study(study_name=full[0], storage=tune_storage.open_storage(storage, paths))


def throughput(n: int, args: argparse.Namespace) -> tuple[int, float]:
    root, name = workspace(n * args.trials_per_worker, args.epochs)
    workers = start(root, n, args.storage, args.tracking)
    if any(w.wait() for w in workers):
        raise SystemExit(f"a worker failed; run `rotmnist tune` in {root} to see why")
    done = study_of(root, name, args.storage).get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    span = max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    shutil.rmtree(root)
    return len(done), len(done) / span.total_seconds() * 60


def death_to_retry(args: argparse.Namespace) -> float:
    root, name = workspace(8, args.epochs * 4)
    workers = start(root, 2, args.storage, args.tracking)
    victim = workers[0]
    while True:
        try:
            trials = study_of(root, name, args.storage).get_trials(deepcopy=False)
        except (IndexError, KeyError):
            trials = []
        running = [t for t in trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
        mine = [t for t in running if t.user_attrs.get("pid") == victim.pid]
        if mine:
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            killed_at, number = time.time(), mine[0].number
            break
        time.sleep(0.2)
    workers[1].wait()
    retry = [t for t in study_of(root, name, args.storage).trials if tune_storage.retry_of(t) == number]
    shutil.rmtree(root)
    return retry[0].datetime_start.timestamp() - killed_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="postgresql://... (the Optuna study)")
    parser.add_argument("--tracking", required=True, help="the MLflow store: postgresql://... or http://...")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--trials-per-worker", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    print("| workers | finished trials | trials per minute |\n|---:|---:|---:|")
    for n in args.workers:
        trials, rate = throughput(n, args)
        print(f"| {n} | {trials} | {rate:.1f} |", flush=True)
    print(f"\ndeath of a worker to the start of its trial's retry: {death_to_retry(args):.1f} s")


if __name__ == "__main__":
    main()
