"""The allowed values, spelled once: the image shape and class count, angles, model families and their specs,
schedules, precisions, devices, and the configurations the `compare` stage can run.

Torch-free, so `config` validates `params.yaml` with the very checks the model factory applies.
A model spec is a plain dict, e.g. `{"family": "cnn", "blocks": 2, "channels": 32, "kernel": 3, ...}`:
what the sweep samples, what `models/best_params.json` stores and what `models/run.json` records.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

IMAGE_SHAPE = (28, 28)  # pixels of one image, rows x columns
N_CLASSES = 10  # digits 0-9
ALLOWED_ANGLES = (-30, -20, -10, 10, 20, 30)  # degrees, counter-clockwise as displayed
DATA_ANGLES = (0, *ALLOWED_ANGLES)  # the angles a dataset row may have: upright and the rotations
CIRCLE = tuple(range(-90, 91, 15))  # monitor.circle's default: a quarter turn each way, in 15-degree steps
SCHEDULES = ("onecycle", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")  # of the training step; auto = bf16 where the hardware runs it natively
DEVICES = ("auto", "cpu", "cuda")
EVAL_BATCH = 2048  # images per forward pass when scoring (memory only: the result does not depend on it)
ROTATION_CHUNK = 256  # images per (angle, block) rotation job (speed only: the output does not depend on it)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# family -> {key: (default, check, allowed values for the error message)}
_POSITIVE = (lambda v: _is_int(v) and v >= 1, "an integer >= 1")
_DROPOUT = (lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= v < 1.0, "a number in [0, 1)")
_BOOL = (lambda v: isinstance(v, bool), "true or false")
SPEC_KEYS: dict[str, dict[str, tuple[Any, Any, str]]] = {
    "cnn": {
        "blocks": (2, lambda v: v in (1, 2, 3), "1, 2 or 3"),
        "channels": (32, *_POSITIVE),  # of the first block; doubled by each further block
        "kernel": (3, lambda v: v in (3, 5), "3 or 5"),
        "convs_per_block": (1, lambda v: v in (1, 2), "1 or 2"),
        "batch_norm": (True, *_BOOL),
        "dense": (128, lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        "dropout": (0.25, *_DROPOUT),
    },
    "mlp": {
        "layers": (2, lambda v: _is_int(v) and 1 <= v <= 4, "1 to 4"),
        "width": (256, *_POSITIVE),
        "dropout": (0.1, *_DROPOUT),
    },
    "logreg": {},
}
FAMILIES = tuple(SPEC_KEYS)
# The values a spec key may take, for the sweep's lists of choices (None: any integer >= 1).
CNN_CHOICES: dict[str, tuple[Any, ...] | None] = {
    "blocks": (1, 2, 3),
    "channels": None,
    "kernel": (3, 5),
    "convs_per_block": (1, 2),
    "batch_norm": (True, False),
    "dense": None,
}
MLP_CHOICES: dict[str, tuple[Any, ...] | None] = {"layers": (1, 2, 3, 4), "width": None}

# `compare`: every family trained on each kind of data, named `<family>-<data>`, plus the pipeline's own model.
TRAINING_DATA = ("upright", "rotated")  # upright digits only; the whole (rotated) train split
PIPELINE_CONFIGURATION = "pipeline"  # the model `train` wrote to models/model.pt
CONFIGURATIONS = (*(f"{f}-{d}" for f in FAMILIES for d in TRAINING_DATA), PIPELINE_CONFIGURATION)


def split_configuration(name: str) -> tuple[str, str]:
    """(family, training data) of a trained configuration such as `cnn-rotated`; ValueError for anything else."""
    family, _, data = name.partition("-")
    if name == PIPELINE_CONFIGURATION or family not in FAMILIES or data not in TRAINING_DATA:
        raise ValueError(
            f"{name!r} is not a trained configuration; expected <family>-<data> from {list(CONFIGURATIONS)}"
        )
    return family, data


def normalize_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """`spec` with its family's defaults filled in; ValueError naming any unknown family, key or bad value."""
    if not isinstance(spec, Mapping):
        raise TypeError(f"a model spec must be a mapping, got {type(spec).__name__}")
    family = spec.get("family")
    if family not in SPEC_KEYS:
        raise ValueError(f"model spec: unknown family {family!r}; expected one of {list(FAMILIES)}")
    keys = SPEC_KEYS[family]
    unknown = sorted(set(spec) - set(keys) - {"family"})
    if unknown:
        raise ValueError(f"model spec: unknown key(s) {unknown} for family {family!r}; allowed: {sorted(keys)}")
    out: dict[str, Any] = {"family": family}
    for key, (default, check, allowed) in keys.items():
        value = spec.get(key, default)
        if not check(value):
            raise ValueError(f"model spec: {family}.{key} must be {allowed}, got {value!r}")
        out[key] = value
    return out


def describe(spec: Mapping[str, Any]) -> str:
    """A short run name saying the family and its key params, e.g. `cnn-b2-c32-k3-d128`."""
    s = normalize_spec(spec)
    if s["family"] == "cnn":
        name = f"cnn-b{s['blocks']}-c{s['channels']}-k{s['kernel']}-d{s['dense']}"
        return name + ("-x2" if s["convs_per_block"] == 2 else "") + ("" if s["batch_norm"] else "-nobn")
    if s["family"] == "mlp":
        return f"mlp-{s['layers']}x{s['width']}"
    return "logreg"


def check_optuna_storage(url: str) -> str:
    """`url` unless it names SQLite, which parallel Optuna workers lock or corrupt: ValueError then."""
    if url.lower().startswith("sqlite"):
        raise ValueError(
            f"Optuna storage {url!r}: SQLite is refused, since parallel workers lock or corrupt it; "
            'use "" (the journal file optuna/journal.log), a journal file path, or postgresql://user:pw@host/db'
        )
    return url


# ---- checks of params.yaml's lists and ranges (used by rotmnist.config) ----


def distinct_values(v: Any, name: str, allowed: tuple[Any, ...], refused: str, *, check_values: bool = True) -> Any:
    """A list from params.yaml as a tuple: refused (`refused`, formatted with {allowed} and {got}) when empty or,
    with `check_values`, holding a value outside `allowed`; refused when it repeats a value."""
    if isinstance(v, list):
        v = tuple(v)
    if not isinstance(v, tuple):
        return v  # pydantic names the wrong type
    bad = [a for a in v if a not in allowed or isinstance(a, bool)] if check_values else []
    if bad or not v:
        raise ValueError(refused.format(allowed=list(allowed), got=list(v)))
    if len(set(v)) != len(v):
        raise ValueError(f"{name} must not repeat, got {list(v)}")
    return v


def log_range(v: tuple[float, float], name: str) -> tuple[float, float]:
    if not 0 < v[0] <= v[1]:
        raise ValueError(f"{name} must be [low, high] with 0 < low <= high, got {list(v)}")
    return v


def check_choices(v: tuple[Any, ...], allowed: tuple[Any, ...] | None = None, low: int = 1) -> tuple[Any, ...]:
    if not v or len(set(v)) != len(v):
        raise ValueError(f"must be a non-empty list of distinct choices, got {list(v)}")
    bad = [c for c in v if (c not in allowed if allowed else c < low)]
    if bad:
        want = f"any of {list(allowed)}" if allowed else f"integers >= {low}"
        raise ValueError(f"choices {bad} are not allowed; use {want}")
    return v


def check_angles(v: list[int], holding: int | None = None) -> list[int]:
    """`v` if it is distinct angles in -180..180 degrees in increasing order (`holding` among them, if given)."""
    rule = "must be distinct angles in -180..180 degrees, in increasing order"
    if holding is not None:
        rule += f", {holding} among them"
    if any(not -180 <= a <= 180 for a in v) or v != sorted(set(v)) or (holding is not None and holding not in v):
        raise ValueError(rule)
    return v
