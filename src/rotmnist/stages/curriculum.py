"""Stage `curriculum`: the drift story simulated end to end (`learning.curriculum`), tracked in MLflow and reported.

A small fixed model (`curriculum.model`) is trained on part of the upright training digits and deployed;
rotated digits arrive in the order of `curriculum.arrivals`; on each drift flag it is retrained with
more data. Every round is an MLflow run nested under one curriculum run; `reports/curriculum.json`
(its headline figures in `metrics/curriculum.json`) and `plots/curriculum/` hold the summary, the
accuracy matrix and the monitor's record.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from rotmnist import io
from rotmnist.config import Config
from rotmnist.data.dataset import load_dataset
from rotmnist.learning import curriculum, plots
from rotmnist.learning.device import apply_threads, resolve_device
from rotmnist.learning.recipe import Hyper, hyper_dict, recipe
from rotmnist.paths import Paths
from rotmnist.reports import write_report
from rotmnist.spec import describe
from rotmnist.tracking import store
from rotmnist.tracking.curriculum import log_summary, round_logger, start_curriculum_run

log = logging.getLogger(__name__)


def plan_of(config: Config) -> tuple[curriculum.Plan, Hyper]:
    """The simulation's plan and training settings from `curriculum` (and the shared recipe in `train`)."""
    c = config.curriculum
    plan = curriculum.Plan(
        arrivals=c.arrivals,
        initial_sources=c.initial_sources,
        increment=c.increment,
        max_rounds=c.max_rounds,
        threshold=c.threshold,
        angle_threshold=c.angle_threshold,
        monitor_sources=c.monitor_sources,
        warm_start=c.warm_start,
        replay=c.replay,
        round_images=c.round_images,
        seed=c.seed,
    )
    hp = recipe(config, {"lr": c.lr, "weight_decay": c.weight_decay, "batch_size": c.batch_size}, c.epochs)
    return plan, hp


def write_plots(folder: Path, sim: curriculum.Simulation, plan: curriculum.Plan) -> list[Path]:
    """CSV for `dvc plots` (one row per round) and the three figures as PNG."""
    rows = curriculum.round_rows(sim)
    angles = sorted(sim.rounds[0].holdout_accuracy)
    labels = [f"{p.angle:+d}°" if p.angle else "0°" for p in sim.phases]
    matrix = curriculum.accuracy_matrix(sim.rounds, tuple(angles))
    arrived = np.array([[a in r.arrived for a in angles] for r in sim.rounds])
    round_labels = [f"{r.step}: {labels[r.phase]} r{r.round}{' ✗' if r.concept_drift else ''}" for r in sim.rounds]
    io.write_csv(folder / "rounds.csv", rows)
    return [
        folder / "rounds.csv",
        plots.plot_accuracy_matrix(matrix, round_labels, angles, folder / "accuracy_matrix.png", arrived),
        plots.plot_monitor_rounds(rows, labels, folder / "monitor.png"),
        plots.plot_train_sizes(rows, angles, labels, folder / "train_sizes.png"),
    ]


def summary_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's headline numbers as MLflow metrics of the curriculum run."""
    metrics = {f"continual_{k}": v for k, v in report["continual"].items()}
    metrics |= {f"final_accuracy_{k}": v for k, v in report["final"]["accuracy"].items()}
    return metrics | {"all_satisfied": float(report["all_satisfied"]), "rounds": float(report["rounds"])}


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """metrics/curriculum.json from reports/curriculum.json: rounds, retrainings, the verdict, the final floor, time."""
    return {
        "rounds": report["rounds"],
        "retrainings": report["retrainings"],
        "all_satisfied": report["all_satisfied"],
        "final_min_accuracy": report["final"]["min_accuracy"],
        "seconds": report["seconds"],
    }


def main(config: Config, paths: Paths) -> None:
    """Simulate the drift story on the train and holdout splits; log every round; write the report and plots."""
    start = time.perf_counter()
    apply_threads(config.train.num_threads)
    train, holdout = load_dataset(paths.split("train")), load_dataset(paths.split("holdout"))
    plan, hp = plan_of(config)
    spec, device = config.curriculum.model, resolve_device(config.train.device)
    store.configure_mlflow(config, paths)
    tags = store.standard_tags(paths, "data/splits") | {"stage": "curriculum"}
    policy = f"{'warm' if plan.warm_start else 'scratch'}-{'replay' if plan.replay else 'noreplay'}"
    params = config.curriculum.model_dump(exclude={"model"}) | spec | hyper_dict(hp, device) | {"device": device.type}
    params["arrivals"] = " ".join(str(a) for a in plan.arrivals)
    with start_curriculum_run(f"curriculum-{describe(spec)}-{policy}", tags, params) as run_id:
        on_round = round_logger(run_id, tags)
        sim = curriculum.simulate(spec, hp, plan, train, holdout, device=device, on_round=on_round)
        written = paths.report("curriculum")
        report = write_report(written, paths.headline("curriculum"), curriculum.report(sim, plan), headline, start)
        files = [written, *write_plots(paths.plots / "curriculum", sim, plan)]
        log_summary(summary_metrics(report), files)
    log.info(
        "curriculum: %d rounds, %s, final holdout accuracy %.2f%% at the worst angle; ACC %.4f BWT %+.4f FWT %+.4f"
        " (%.0f s)",
        report["rounds"],
        "every phase satisfied" if report["all_satisfied"] else "SOME PHASES UNSATISFIED",
        100 * report["final"]["min_accuracy"],
        *report["continual"].values(),
        time.perf_counter() - start,
    )
