"""Training throughput of the default model: float32 vs bf16, how close to the CPU's peak, and the loop's overhead.

Usage: python -m benchmarks.train [--images 20000] [--batch-size 256] [--repeats 2] [--spec '{"family": "cnn", ...}']
       python -m benchmarks.train --time-to 0.99   # also: wall time until val accuracy >= 99 % (meant for a GPU)
Uses data/splits/train (and val) if they exist, else synthetic digits; the model is models/best_params.json's,
else the CNN below. Every loop runs the same model, optimiser, batch size and images; the best of `--repeats`
one-epoch timings is reported (the machine may be shared: the minimum is the signal).

The second table puts the pipeline's training step (±2 px shift, label smoothing) in float32 and in bf16
autocast side by side, with the achieved GFLOP/s (the step's floating-point operations per image, counted
by torch's FlopCounterMode for one forward and backward pass, times images/s) against this CPU's measured
peak: a large square matmul in the same process, same threads and dtype. bf16 autocast runs everywhere,
but only CPUs with AVX512-BF16 or AMX run it natively; elsewhere it is emulated and slower than float32.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from rotmnist.config import load_config
from rotmnist.data.dataset import Dataset, load_dataset
from rotmnist.learning.device import cpu_has_bf16, resolve_device, resolve_precision
from rotmnist.learning.model import classifier_from_spec
from rotmnist.learning.recipe import Hyper, recipe
from rotmnist.learning.training import fit, pixel_stats
from rotmnist.paths import Paths
from rotmnist.spec import describe

PEAK_NOTE = "a 4096 x 4096 matmul in the same dtype, best of 5"


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (or the platform's processor string)."""
    import platform
    from pathlib import Path

    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0]} ({len(names)} threads)" if names else platform.processor() or "unknown"


DEFAULT_SPEC = {"family": "cnn", "blocks": 3, "channels": 16, "kernel": 3, "dense": 128, "dropout": 0.2}


class PerSample(TorchDataset):
    """The textbook way: one normalised float tensor per `__getitem__`, batched by the default collate."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y.astype(np.int64)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.x[i].astype(np.float32)), int(self.y[i])


def synthetic(n: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = (rng.random((n, 28, 28)) < 0.15).astype(np.uint8) * 255
    return Dataset(
        x=x,
        y=rng.integers(0, 10, n).astype(np.uint8),
        source_id=np.arange(n, dtype=np.int32),
        angle=np.zeros(n, np.int8),
        mnist_split=np.zeros(n, np.int8),
    )


def in_memory_epoch(spec: dict, ds: Dataset, batch_size: int, device: torch.device, shift: int = 0) -> float:
    """Images/s of one epoch of `rotmnist.learning.training.fit` (uint8 tensor, randperm, batches by indexing)."""
    hp = Hyper(batch_size=batch_size, epochs=1, shift=shift)
    return fit(spec, ds, None, hp, device=device, desc="in-memory").history[0]["images_per_second"]


def pipeline_epoch(spec: dict, ds: Dataset, batch_size: int, device: torch.device) -> float:
    """The pipeline's step: random shift of up to `train.shift` pixels, `train.precision` (auto: bf16 if native)."""
    t = load_config().train
    hp = Hyper(batch_size=batch_size, epochs=1, shift=t.shift, precision=t.precision)
    return fit(spec, ds, None, hp, device=device, desc="pipeline").history[0]["images_per_second"]


def precision_epoch(spec: dict, ds: Dataset, batch_size: int, device: torch.device, precision: str) -> float:
    """Images/s of one epoch of the pipeline's step (shift, label smoothing) in `precision` (fp32 or bf16)."""
    t = load_config().train
    hp = Hyper(batch_size=batch_size, epochs=1, shift=t.shift, label_smoothing=t.label_smoothing, precision=precision)
    return fit(spec, ds, None, hp, device=device, desc=precision).history[0]["images_per_second"]


def step_flops_per_image(spec: dict, batch_size: int) -> float:
    """Floating-point operations of one training step (forward and backward) per image, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    model = classifier_from_spec(spec, 33.0, 78.0)
    x = torch.rand(batch_size, 28, 28) * 255
    y = torch.randint(0, 10, (batch_size,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model.logits(x), y).backward()
    return counter.get_total_flops() / batch_size


def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of the fastest of `repeats` n x n matmuls in `dtype`: the CPU's practical peak for that dtype."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def dataloader_epoch(spec: dict, ds: Dataset, batch_size: int, device: torch.device) -> float:
    """Images/s of one epoch through DataLoader(PerSample, shuffle=True), same model/optimiser/step."""
    torch.manual_seed(0)
    model = classifier_from_spec(spec, *pixel_stats(ds.x)).to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = DataLoader(PerSample(ds.x, ds.y), batch_size=batch_size, shuffle=True, num_workers=0)
    model.train()
    start = time.perf_counter()
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        loss = F.cross_entropy(model.logits(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(ds) / (time.perf_counter() - start)


def time_to(spec: dict, hyper: dict, train: Dataset, val: Dataset, target: float, device, max_epochs: int) -> dict:
    """Wall time (incl. per-epoch validation) until val accuracy >= target, with a OneCycle over max_epochs."""

    class Reached(Exception):
        pass

    start, seen = time.perf_counter(), []

    def stop(m: dict) -> None:
        seen.append(m)
        if m["val_accuracy"] >= target:
            raise Reached

    hp = recipe(load_config(), hyper, max_epochs)  # the pipeline's recipe (shift, smoothing, schedule)
    with contextlib.suppress(Reached):
        fit(spec, train, val, hp, device=device, on_epoch=stop, desc="time-to")
    return {
        "reached": bool(seen and seen[-1]["val_accuracy"] >= target),
        "epochs": len(seen),
        "seconds": time.perf_counter() - start,
        "val_accuracy": seen[-1]["val_accuracy"] if seen else math.nan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="images per timed epoch")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the tuned one, else 256")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--spec", default=None, help="model spec as JSON (default: models/best_params.json)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--time-to", type=float, default=None, help="also time training to this val accuracy")
    parser.add_argument("--max-epochs", type=int, default=8)
    args = parser.parse_args()

    paths = Paths.here()
    best_file = paths.models / "best_params.json"
    best = json.loads(best_file.read_text()) if best_file.is_file() else {}
    spec = json.loads(args.spec) if args.spec else best.get("spec", DEFAULT_SPEC)
    hyper = best.get("hyper", {"lr": 3e-3, "weight_decay": 1e-4, "batch_size": 256})
    batch_size = args.batch_size or hyper["batch_size"]
    device = resolve_device(args.device)
    have_splits = paths.split("train").is_dir()
    full = load_dataset(paths.split("train")) if have_splits else synthetic(max(args.images, 1000))
    index = np.random.default_rng(0).permutation(len(full))[: args.images]
    ds = full.take(np.sort(index))

    loops = {
        "DataLoader, per-sample": dataloader_epoch,
        "in-memory (rotmnist.learning.training.fit)": in_memory_epoch,
        "in-memory + shift + train.precision (the pipeline)": pipeline_epoch,
    }
    in_memory_epoch(spec, ds.take(np.arange(min(len(ds), 2048))), batch_size, device)  # warm-up, not timed
    rows = [(name, max(run(spec, ds, batch_size, device) for _ in range(args.repeats))) for name, run in loops.items()]
    precision = load_config().train.precision
    print(
        f"\nmodel {describe(spec)}, batch {batch_size}, {len(ds)} images per epoch, device {device}, "
        f"{torch.get_num_threads()} threads, data: {'data/splits/train' if have_splits else 'synthetic'}, "
        f"train.precision {precision} -> {resolve_precision(precision, device)}\n"
    )
    print("| loop | images/s | vs DataLoader |")
    print("|---|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} | {rate / rows[0][1]:.2f}x |")

    flops = step_flops_per_image(spec, batch_size)
    print(f"\ntraining step: {flops / 1e6:.1f} MFLOP per image (forward and backward); peak = {PEAK_NOTE}\n")
    print("| precision | images/s | achieved GFLOP/s | matmul peak GFLOP/s | share of peak |")
    print("|---|---:|---:|---:|---:|")
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        rate = max(precision_epoch(spec, ds, batch_size, device, precision) for _ in range(args.repeats))
        peak = matmul_peak(dtype)
        achieved = rate * flops / 1e9
        print(f"| {precision} | {rate:,.0f} | {achieved:,.1f} | {peak:,.1f} | {achieved / peak:.0%} |")
    print(f"\nCPU: {cpu_name()}; native bf16: {cpu_has_bf16()}")

    if args.time_to is not None:
        if not (have_splits and paths.split("val").is_dir()):
            raise SystemExit("--time-to needs data/splits/train and data/splits/val")
        result = time_to(spec, hyper, full, load_dataset(paths.split("val")), args.time_to, device, args.max_epochs)
        print(f"\ntime to val accuracy {args.time_to:.2%} on {device}: {json.dumps(result)}")


if __name__ == "__main__":
    main()
