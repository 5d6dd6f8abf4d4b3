"""Stage `compare`: every pipeline configuration's test accuracy per angle, latency and SLA verdict in one table.

Each model family (`compare.specs`) is trained on upright digits only and on the rotated train split with
one budget (`compare.train_images`), seed and recipe; the model `train` wrote is the last row. Every
configuration is an MLflow run nested under one `compare` run; the DVC outputs are the table
(`reports/compare.json`), its headline figures (`metrics/compare.json`) and `plots/compare/`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from rotmnist import io
from rotmnist.config import Config
from rotmnist.data.dataset import Dataset, load_dataset
from rotmnist.errors import PipelineError
from rotmnist.learning import plots
from rotmnist.learning.compare import mark_pareto, score, train_configuration
from rotmnist.learning.device import apply_threads, resolve_device
from rotmnist.learning.model import load_pipeline_model
from rotmnist.learning.recipe import Hyper, hyper_dict, recipe
from rotmnist.paths import Paths
from rotmnist.reports import rounded, write_report
from rotmnist.spec import CONFIGURATIONS, PIPELINE_CONFIGURATION, describe, split_configuration
from rotmnist.tracking import store
from rotmnist.tracking.compare import configuration_run, log_row, log_summary, parent_run, training_record

log = logging.getLogger(__name__)


def _model(name: str, config: Config, train: Dataset, hp: Hyper, device: Any, pipeline: Any) -> tuple[Any, ...]:
    """Configuration `name`'s CPU model, a row's description of it, its spec and its training record."""
    if name != PIPELINE_CONFIGURATION:
        family, data = split_configuration(name)
        spec = getattr(config.compare.specs, family)
        model, record = train_configuration(name, config.compare, train, hp, device)
    else:  # `train`'s model, trained on the whole (rotated) train split; its record is in its MLflow run
        model, reference = pipeline
        spec, data = reference["spec"], "rotated"
        record = training_record(str(reference.get("run_id", "")))
        record = record or {"train_images": 0, "train_seconds": 0.0, "trained_by": "train (run not in this store)"}
    return model, {"model": describe(spec), "training_data": data}, spec, record


def angle_table(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Accuracy per angle, one column per configuration: every possible one, blank if not run (dvc.yaml names them)."""
    angles = sorted({int(a) for row in rows.values() for a in row["angle_accuracy"]})
    return [
        {"angle": a} | {n: rows[n]["angle_accuracy"].get(str(a), "") if n in rows else "" for n in CONFIGURATIONS}
        for a in angles
    ]


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """metrics/compare.json from reports/compare.json: the pipeline's row (if run), the SLA count, the time."""
    rows = report["configurations"]
    pipeline = rows.get(PIPELINE_CONFIGURATION, {})
    return {
        "pipeline_worst_angle_accuracy": pipeline.get("worst_angle_accuracy"),
        "pipeline_latency_ms_p99": pipeline.get("latency_ms_p99"),
        "configurations_meeting_sla": sum(bool(r["sla_met"]) for r in rows.values()),
        "seconds": report["seconds"],
    }


def write_outputs(paths: Paths, config: Config, rows: dict[str, dict[str, Any]], start: float) -> list[Path]:
    """reports/compare.json, its headline metrics/compare.json, and plots/compare/: CSV for `dvc plots`, PNGs."""
    sla, folder = config.compare.sla, paths.plots / "compare"
    report = {"configurations": rows, "sla": sla.model_dump(), "latency": config.latency.model_dump()}
    write_report(paths.report("compare"), paths.headline("compare"), report, headline, start)
    with io.atomic_path(folder, is_dir=True) as tmp:
        io.write_csv(tmp / "angle_accuracy.csv", angle_table(rows))
        keys = ("latency_ms_p99", "worst_angle_accuracy", "latency_ms_p50", "sla_met", "pareto")
        io.write_csv(tmp / "pareto.csv", [{"configuration": n} | {k: r[k] for k in keys} for n, r in rows.items()])
        plots.plot_compare_angles(rows, tmp / "angle_accuracy.png", sla.min_worst_angle_accuracy)
        plots.plot_pareto(rows, tmp / "pareto.png", sla.min_worst_angle_accuracy, sla.max_p99_latency_ms)
    return sorted(p for p in folder.rglob("*") if p.is_file())


def main(config: Config, paths: Paths) -> None:
    """Train and score every listed configuration, judge the SLA, write the table and plots, log to MLflow."""
    cfg, start = config.compare, time.perf_counter()
    apply_threads(config.train.num_threads)
    train, test = (load_dataset(paths.split(s)) for s in ("train", "test"))
    if len(test) == 0:
        raise PipelineError(f"the test split {paths.split('test')} is empty; check the split stage")
    listed = PIPELINE_CONFIGURATION in cfg.configurations
    pipeline = load_pipeline_model(paths.model_file, paths.run_reference) if listed else None
    hp = recipe(config, cfg.model_dump(include={"lr", "weight_decay", "batch_size"}), epochs=1)
    device = resolve_device(config.train.device)
    store.configure_mlflow(config, paths)
    tags = store.standard_tags(paths, "data/splits") | {"stage": "compare"}
    params = {**hyper_dict(hp, device), "budget_images": cfg.train_images, "seed": cfg.seed, "device": device.type}
    rows: dict[str, dict[str, Any]] = {}
    run_ids: dict[str, str] = {}
    with parent_run("compare", tags, params | {"configurations": ",".join(cfg.configurations)}) as parent:
        for name in cfg.configurations:
            with configuration_run(parent, name, tags, params) as run_ids[name]:
                model, described, spec, record = _model(name, config, train, hp, device, pipeline)
                rows[name] = described | score(model, test, cfg, config.latency) | record
                log_row(rows[name], spec)
            _announce(name, rows[name])
        rows = rounded(mark_pareto(rows))
        files = write_outputs(paths, config, rows, start)
        log_summary(run_ids, rows, files)
    log.info(
        "compared %d configurations in %.0f s; table in %s",
        len(rows),
        time.perf_counter() - start,
        paths.report("compare"),
    )


def _announce(name: str, row: dict[str, Any]) -> None:
    log.info(
        "%s: test accuracy %.2f%% (upright %.2f%%, worst %+d° %.2f%%), p99 %.2f ms; SLA %s",
        name,
        100 * row["accuracy"],
        100 * row["upright_accuracy"],
        row["worst_angle"],
        100 * row["worst_angle_accuracy"],
        row["latency_ms_p99"],
        "met" if row["sla_met"] else f"FAILED: {row['sla_reasons']}",
    )
