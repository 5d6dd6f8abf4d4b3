"""The sweep's search space: what a trial samples from `tune.space`, and how its params read back."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna

from rotmnist.learning.recipe import HYPER_KEYS
from rotmnist.spec import CNN_CHOICES, describe

if TYPE_CHECKING:
    from rotmnist.config import TuneConfig


def suggest(trial: optuna.Trial, cfg: TuneConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sample a model spec and its optimiser settings from `tune.space` (family-specific params only)."""
    space = cfg.space
    family = trial.suggest_categorical("family", list(cfg.families))
    spec: dict[str, Any] = {"family": family}
    if family == "cnn":
        for key in CNN_CHOICES:
            spec[key] = trial.suggest_categorical(key, list(getattr(space.cnn, key)))
        spec["dropout"] = trial.suggest_float("dropout", *space.dropout)
    elif family == "mlp":
        for key in ("layers", "width"):
            spec[key] = trial.suggest_categorical(key, list(getattr(space.mlp, key)))
        spec["dropout"] = trial.suggest_float("dropout", *space.dropout)
    hyper = {
        "lr": trial.suggest_float("lr", *space.lr, log=True),
        "weight_decay": trial.suggest_float("weight_decay", *space.weight_decay, log=True),
        "batch_size": trial.suggest_categorical("batch_size", list(space.batch_size)),
    }
    return spec, hyper


def params_to_choice(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a trial's flat params back into (model spec, optimiser settings)."""
    spec = {k: v for k, v in params.items() if k not in HYPER_KEYS}
    return spec, {k: params[k] for k in HYPER_KEYS}


def run_name(number: int | None, spec: dict[str, Any], hyper: dict[str, Any]) -> str:
    """e.g. `t003-cnn-b2-c16-k3-d128-lr3e-03-bs256`: the family and key params at a glance."""
    prefix = f"t{number:03d}-" if number is not None else ""
    return f"{prefix}{describe(spec)}-lr{hyper['lr']:.0e}-bs{hyper['batch_size']}"
