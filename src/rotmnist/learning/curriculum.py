"""The drift story, simulated: a model is deployed, rotated digits arrive, the monitor flags, the model is retrained.

Pure compute (no MLflow): phases follow the arrival order of the angles; in each phase the deployed model
is checked with `monitor_perf` on a fixed sample of holdout digits at every angle arrived so far (the
"mix"), and with the same rule on each arrived angle's part of it. On drift the next increment of training
digits at each arrived angle joins the pool (or replaces it with replay off) and the model is retrained
(warm from the deployed one, or from scratch), until the monitor is satisfied or the phase's round budget
is spent. Callers observe each round through `on_round`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rotmnist.data.dataset import Dataset
from rotmnist.data.sources import Pool, sample_sources
from rotmnist.errors import PipelineError
from rotmnist.learning.gate import is_concept_drift, monitor_perf
from rotmnist.learning.metrics import error_rate, slice_metrics
from rotmnist.learning.model import RawImageClassifier, predict_labels
from rotmnist.learning.recipe import Hyper
from rotmnist.learning.training import fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """What the simulation does: the arrival order, the data it may add, the monitor and the retraining policy."""

    arrivals: tuple[int, ...]  # angles in the order they arrive; the first is the deployed model's own
    initial_sources: int  # training digits of round 0, at the first angle only
    increment: int  # per retraining, the next digits added to the pool at each arrived angle
    max_rounds: int  # retrainings a phase may use before it is reported unsatisfied
    threshold: float  # the monitor's error threshold on the mix
    angle_threshold: float  # and on each arrived angle's part of the mix
    monitor_sources: int  # holdout digits in the monitor's sample, each at every arrived angle
    warm_start: bool = True  # retrain from the deployed model (else from scratch)
    replay: bool = True  # keep earlier increments in the pool (else train on the newest only)
    round_images: int = 0  # most images one retraining sees (the newest increment first); 0 = all of them
    seed: int = 0


@dataclass(frozen=True)
class Round:
    """One round: the model deployed after it (trained in it or not), as the monitor and the holdout saw it."""

    step: int  # global round number, 0 = the first model
    phase: int
    angle: int  # the angle whose arrival opened the phase
    round: int  # within the phase: 0 = the check on arrival (round 0 of phase 0 also trains the first model)
    arrived: tuple[int, ...]
    trained: bool
    added_images: int  # training images this round added to the pool
    train_per_angle: dict[int, int]  # images per angle of the set the model was last trained on
    monitor_n: int
    monitor_error: float
    threshold: float
    angle_errors: dict[int, float]  # the monitor's error on each arrived angle's part of the mix
    angle_threshold: float
    concept_drift: bool  # the mix's error above `threshold`, or an arrived angle's above `angle_threshold`
    holdout_accuracy: dict[int, float]  # every angle of the holdout, arrived or not
    train_seconds: float

    @property
    def train_images(self) -> int:
        return sum(self.train_per_angle.values())


@dataclass
class Phase:
    """A phase's outcome: how many retrainings and new images it took, and whether the monitor was satisfied."""

    angle: int
    rounds: int
    new_images: int
    monitor_error: float
    worst_angle_error: float
    satisfied: bool
    note: str = ""


@dataclass
class Simulation:
    """Every round and phase, and the final model."""

    rounds: list[Round] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    model: RawImageClassifier | None = None

    def phase_ends(self) -> list[Round]:
        """The last round of each phase: the rows of the continual-learning accuracy matrix."""
        return [[r for r in self.rounds if r.phase == p][-1] for p in range(len(self.phases))]


RoundCallback = Callable[[Round], None]


class _Recorder:
    """A model as `monitor_perf` sees it (`.predict`), remembering its last predictions for the error report."""

    def __init__(self, model: RawImageClassifier):
        self.model, self.yhat = model, np.zeros(0, np.int64)

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.yhat = predict_labels(self.model, x)
        return self.yhat


def check_plan(plan: Plan, train: Dataset, holdout: Dataset) -> None:
    """A PipelineError if an arriving angle is missing from the training or the holdout data."""
    for name, ds in (("train", train), ("holdout", holdout)):
        missing = sorted(set(plan.arrivals) - set(np.unique(ds.angle).tolist()))
        if missing:
            raise PipelineError(
                f"the {name} split has no images at {missing} deg; remove them from curriculum.arrivals "
                "or add them to augment.angles"
            )


def holdout_accuracy(model: RawImageClassifier, holdout: Dataset) -> dict[int, float]:
    """Accuracy of `model` on the holdout at every angle it holds."""
    per_angle = slice_metrics(holdout.y, predict_labels(model, holdout.x), holdout.angle)["per_angle"]
    return {int(a): m["accuracy"] for a, m in per_angle.items()}


@dataclass
class _State:
    """What carries from round to round: the deployed model, the pool and the last training set's make-up."""

    pool: Pool
    model: RawImageClassifier | None = None
    per_angle: dict[int, int] = field(default_factory=dict)


def _retrain(state: _State, spec: Mapping[str, Any], hp: Hyper, plan: Plan, device, seed: int, desc: str) -> float:
    """Train on the pool (from the deployed model when warm-starting); deploy the result; return the seconds."""
    data = state.pool.rows(plan.replay, plan.round_images, seed)
    if len(data) == 0:
        raise PipelineError(f"{desc}: the training digits have no images at the arrived angles; check augment")
    start = time.perf_counter()
    init = state.model if plan.warm_start else None
    state.model = fit(spec, data, None, hp, device=device, seed=seed, init=init, desc=desc).model
    state.per_angle = {int(a): int(n) for a, n in zip(*np.unique(data.angle, return_counts=True), strict=True)}
    return time.perf_counter() - start


def _check(
    sim: Simulation,
    state: _State,
    phase: int,
    rnd: int,
    added: int,
    seconds: float,
    plan: Plan,
    mix: Dataset,
    holdout: Dataset,
) -> Round:
    """Run the monitor on the deployed model: on the mix and on each arrived angle's part of it; record the round."""
    angle, arrived = plan.arrivals[phase], plan.arrivals[: phase + 1]
    recorder = _Recorder(state.model)
    mix_drift = bool(monitor_perf(recorder, mix, plan.threshold))
    angle_errors = {a: error_rate(mix.y[mix.angle == a], recorder.yhat[mix.angle == a]) for a in arrived}
    drift = mix_drift or any(is_concept_drift(e, plan.angle_threshold) for e in angle_errors.values())
    record = Round(
        step=len(sim.rounds),
        phase=phase,
        angle=angle,
        round=rnd,
        arrived=arrived,
        trained=seconds > 0,
        added_images=added,
        train_per_angle=dict(state.per_angle),
        monitor_n=len(mix),
        monitor_error=error_rate(mix.y, recorder.yhat),
        threshold=plan.threshold,
        angle_errors=angle_errors,
        angle_threshold=plan.angle_threshold,
        concept_drift=drift,
        holdout_accuracy=holdout_accuracy(state.model, holdout),
        train_seconds=seconds,
    )
    sim.rounds.append(record)
    log.info(
        "phase %d (%+d deg) round %d: %d training images, monitor error %.2f%% (threshold %.2f%%), "
        "worst angle %.2f%% (threshold %.2f%%)%s",
        phase,
        angle,
        rnd,
        record.train_images,
        100 * record.monitor_error,
        100 * plan.threshold,
        100 * max(angle_errors.values()),
        100 * plan.angle_threshold,
        ": concept drift" if drift else "",
    )
    return record


def _run_phase(
    sim: Simulation,
    state: _State,
    phase: int,
    spec,
    hp: Hyper,
    plan: Plan,
    sample: Dataset,
    holdout: Dataset,
    device,
    on_round: RoundCallback | None,
) -> Phase:
    """The rounds of one phase: check, and on drift add data and retrain, until satisfied or out of budget."""
    angle, arrived = plan.arrivals[phase], plan.arrivals[: phase + 1]
    mix = sample.take(np.isin(sample.angle, arrived))
    retrains, new_images, note = 0, 0, ""
    for rnd in range(plan.max_rounds + 1):
        added, seconds = 0, 0.0
        if state.model is None or rnd > 0:  # the first model, or a retraining after a flagged check
            if state.pool.exhausted(arrived):
                note = f"the training data ran out (all {state.pool.n_sources} digits, at every arrived angle)"
                break
            added = state.pool.add(plan.initial_sources if state.model is None else plan.increment, arrived)
            desc = f"phase {phase} ({angle:+d} deg) round {rnd}"
            seconds = _retrain(state, spec, hp, plan, device, plan.seed + len(sim.rounds), desc)
            retrains, new_images = retrains + (rnd > 0), new_images + added
        record = _check(sim, state, phase, rnd, added, seconds, plan, mix, holdout)
        if on_round is not None:
            on_round(record)
        if not record.concept_drift:
            worst = max(record.angle_errors.values())
            return Phase(angle, retrains, new_images, record.monitor_error, worst, satisfied=True)
    note = note or f"the round budget (curriculum.max_rounds = {plan.max_rounds}) is spent"
    log.warning("phase %d (%+d deg) ends with the monitor unsatisfied: %s", phase, angle, note)
    last = sim.rounds[-1]
    worst = max(last.angle_errors.values())
    return Phase(angle, retrains, new_images, last.monitor_error, worst, satisfied=False, note=note)


def simulate(
    spec: Mapping[str, Any],
    hp: Hyper,
    plan: Plan,
    train: Dataset,
    holdout: Dataset,
    *,
    device: torch.device | str = "cpu",
    on_round: RoundCallback | None = None,
) -> Simulation:
    """Run every phase of `plan`; seeded, so the same inputs give the same rounds and the same final model."""
    check_plan(plan, train, holdout)
    state = _State(Pool(train, plan.seed))
    sample = sample_sources(holdout, plan.monitor_sources, plan.seed)
    sim = Simulation()
    for phase in range(len(plan.arrivals)):
        sim.phases.append(_run_phase(sim, state, phase, spec, hp, plan, sample, holdout, device, on_round))
    sim.model = state.model
    return sim


# ---- the report: the accuracy matrix, its continual-learning summary, and flat rows for files and MLflow -----


def accuracy_matrix(rounds: list[Round], angles: tuple[int, ...]) -> np.ndarray:
    """Holdout accuracy, one row per round in `rounds`, one column per angle in `angles`."""
    return np.array([[r.holdout_accuracy[a] for a in angles] for r in rounds], dtype=np.float64)


def continual_summary(matrix: np.ndarray, baseline: np.ndarray) -> dict[str, float]:
    """GEM's (Lopez-Paz & Ranzato, 2017) summary of R[i, j], accuracy on task j after learning task i.

    ACC: mean final accuracy over the tasks; BWT: mean change of an earlier task's accuracy from when it
    was learnt to the end (negative: forgetting); FWT: mean accuracy on a task just before it arrives,
    minus `baseline` (here the first model's accuracy on it). With one task, BWT and FWT are 0.
    """
    t = len(matrix)
    if matrix.shape != (t, t) or baseline.shape != (t,) or t == 0:
        raise ValueError(
            f"need a square, non-empty matrix and one baseline per task; got {matrix.shape}, {baseline.shape}"
        )
    acc = float(matrix[-1].mean())
    bwt = float(np.mean([matrix[-1, i] - matrix[i, i] for i in range(t - 1)])) if t > 1 else 0.0
    fwt = float(np.mean([matrix[i - 1, i] - baseline[i] for i in range(1, t)])) if t > 1 else 0.0
    return {"acc": acc, "bwt": bwt, "fwt": fwt}


def _angle_key(angle: int) -> str:
    return f"angle_{angle}"


def round_metrics(r: Round) -> dict[str, float]:
    """One round's numbers, flat (for MLflow and the CSV)."""
    metrics = {
        "train_images": float(r.train_images),
        "added_images": float(r.added_images),
        "monitor_error": r.monitor_error,
        "threshold": r.threshold,
        "worst_angle_error": max(r.angle_errors.values()),
        "angle_threshold": r.angle_threshold,
        "concept_drift": float(r.concept_drift),
        "train_seconds": r.train_seconds,
    }
    metrics |= {f"train_images_{_angle_key(a)}": float(r.train_per_angle.get(a, 0)) for a in r.holdout_accuracy}
    metrics |= {f"holdout_accuracy_{_angle_key(a)}": acc for a, acc in r.holdout_accuracy.items()}
    metrics |= {f"monitor_error_{_angle_key(a)}": e for a, e in r.angle_errors.items()}
    return metrics


def round_rows(sim: Simulation) -> list[dict[str, Any]]:
    """One CSV row per round: where it is, the training set, the monitor, the holdout accuracy per angle."""
    rows = []
    for r in sim.rounds:
        row = {"step": r.step, "phase": r.phase, "angle": r.angle, "round": r.round, "trained": int(r.trained)}
        row |= {"train_images": r.train_images, "monitor_error": round(r.monitor_error, 6), "threshold": r.threshold}
        row |= {"worst_angle_error": round(max(r.angle_errors.values()), 6), "angle_threshold": r.angle_threshold}
        row |= {"drift": int(r.concept_drift), "train_seconds": round(r.train_seconds, 2)}
        row |= {f"train_{a}": r.train_per_angle.get(a, 0) for a in sorted(r.holdout_accuracy)}
        row |= {f"accuracy_{a}": round(acc, 6) for a, acc in sorted(r.holdout_accuracy.items())}
        rows.append(row)
    return rows


def report(sim: Simulation, plan: Plan) -> dict[str, Any]:
    """reports/curriculum.json (less its time): per phase, the final per-angle accuracy, ACC/BWT/FWT; no nulls."""
    ends = sim.phase_ends()
    arrivals = plan.arrivals
    matrix = accuracy_matrix(ends, arrivals)
    baseline = accuracy_matrix(sim.rounds[:1], arrivals)[0]
    final = sim.rounds[-1].holdout_accuracy
    phases = {
        f"{i}_{_angle_key(p.angle)}": {
            "rounds": p.rounds,
            "new_images": p.new_images,
            "train_images": ends[i].train_images,
            "monitor_error": round(p.monitor_error, 6),
            "worst_angle_error": round(p.worst_angle_error, 6),
            "satisfied": p.satisfied,
            "note": p.note or "satisfied",
        }
        for i, p in enumerate(sim.phases)
    }
    return {
        "all_satisfied": all(p.satisfied for p in sim.phases),
        "rounds": len(sim.rounds),
        "retrainings": sum(r.trained for r in sim.rounds),
        "final": {
            "train_images": sim.rounds[-1].train_images,
            "min_accuracy": round(min(final.values()), 6),
            "accuracy": {_angle_key(a): round(acc, 6) for a, acc in sorted(final.items())},
        },
        "continual": {k: round(v, 6) for k, v in continual_summary(matrix, baseline).items()},
        "phases": phases,
    }
