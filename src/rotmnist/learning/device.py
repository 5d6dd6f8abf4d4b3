"""Where and how a model runs: the device, the training step's precision, and torch's CPU threads.

The one place that sets torch threads: the stages (`apply_threads` from `train.num_threads`), the latency
timer and the server's scoring thread all call it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch

from rotmnist.errors import PipelineError
from rotmnist.spec import DEVICES, PRECISIONS


def apply_threads(num_threads: int) -> None:
    """Use `num_threads` CPU threads for torch (0 = leave torch's default)."""
    if num_threads:
        torch.set_num_threads(num_threads)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch CPU threads (0 = as it is), then restore the previous number."""
    before = torch.get_num_threads()
    apply_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` -> CUDA when available, else CPU; `cuda` without a GPU is an error."""
    if name not in DEVICES:
        raise PipelineError(f"train.device must be one of {list(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX); without it bf16 is emulated, slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto` -> bf16 autocast where the hardware runs it natively (CUDA with bf16, CPUs with AVX512-BF16/AMX).

    Only the training step uses it (weights, optimiser state, loss and evaluation stay float32); on such a
    CPU it trains the default CNN about 1.6x faster (docs/results.md).
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {name!r}")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"
