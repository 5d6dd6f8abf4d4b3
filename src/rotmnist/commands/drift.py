"""`rotmnist drift`: input drift. Have the served digits moved away from what the model was trained on?

No labels needed, unlike the gate's concept drift (holdout check) in stage `monitor`.

Reads the last `drift.recent` images the server logged (`storage.request_store`, read only: no writer
starts) and a sample of `drift.reference` images of `data/splits/train`, scored by the model that
served most of the recent ones (or `--model`). Compares their tilt, ink mass, bounding box and top probability
(`learning.drift`), then writes `metrics/drift.json` (`dvc metrics show metrics/drift.json`),
`plots/drift.png` and an MLflow run tagged `role = input_drift`. Prints the verdict: `ok`, `narrower`
(different but inside the trained range) or `harmful` (outside it, or a less sure model).
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import numpy as np

from rotmnist.config import MIN_RECENT_INPUTS, Config
from rotmnist.data.dataset import load_dataset
from rotmnist.data.features import bbox_size, ink_mass, tilt_degrees
from rotmnist.errors import PipelineError
from rotmnist.learning.drift import compare, plot_input_drift
from rotmnist.paths import Paths
from rotmnist.reports import write_metrics
from rotmnist.storage.request_store import RequestStore, store_url
from rotmnist.tracking import registry, store
from rotmnist.tracking.drift import log_input_drift_run

log = logging.getLogger(__name__)


def features(x: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """The label-free features `learning.drift` compares, of images `x` and the model's probabilities."""
    box = bbox_size(x)
    return {
        "tilt_degrees": tilt_degrees(x),
        "ink_mass": ink_mass(x),
        "bbox_area": (box[:, 0] * box[:, 1]).astype(np.float64),
        "top_probability": np.asarray(probs, np.float64).max(axis=1),
    }


def served_uri(models: list[str | None], versions: list[str | None], default_name: str) -> str:
    """`models:/<name>/<version>` of the model that answered most of the rows, else the champion of `default_name`."""
    pairs = Counter((m, v) for m, v in zip(models, versions, strict=True) if m and v)
    if not pairs:
        return f"models:/{default_name}@{registry.CHAMPION}"
    (name, version), _ = pairs.most_common(1)[0]
    return f"models:/{name}/{version}"


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def main(config: Config, paths: Paths, model_uri: str | None = None) -> dict[str, Any]:
    """Run the check; return the report it wrote."""
    cfg = config.drift
    with RequestStore(store_url(config.serve, paths)) as requests:
        recent = requests.recent(cfg.recent)
    if len(recent.ids) < MIN_RECENT_INPUTS:
        raise PipelineError(
            f"the request log ({requests.describe()}) holds {len(recent.ids)} scored images; an input drift check "
            f"needs at least {MIN_RECENT_INPUTS}: serve more digits first (rotmnist serve, serve.log_requests: true)"
        )
    if len(recent.ids) < cfg.recent:
        log.warning("the request log holds %d images, fewer than drift.recent = %d", len(recent.ids), cfg.recent)
    store.configure_mlflow(config, paths)
    uri = model_uri or served_uri(recent.models, recent.versions, config.monitor.model_name)
    model = registry.load_model(uri)
    train = load_dataset(paths.split("train"))
    rows = np.sort(np.random.default_rng(cfg.seed).choice(len(train), min(cfg.reference, len(train)), replace=False))
    reference_x = np.asarray(train.x[rows])
    reference = features(reference_x, model.predict_proba(reference_x))
    latest = features(recent.images, recent.probabilities)
    report = compare(reference, latest, cfg) | {
        "model": uri,
        "first_request": _utc(recent.times[0]),
        "last_request": _utc(recent.times[-1]),
    }
    written, plot = paths.metrics / "drift.json", paths.plots / "drift.png"
    write_metrics(written, report)
    plot_input_drift(reference, latest, report, plot)
    tags = store.standard_tags(paths, "data/splits")
    params = {"recent": cfg.recent, "reference": cfg.reference, "seed": cfg.seed, "bins": cfg.bins, "model": uri}
    run_id = log_input_drift_run(report, params, tags, [written, plot])
    drifted = report["drifted"] or "none"
    log.info("input drift: %s (features drifted: %s); MLflow run %s", report["verdict"], drifted, run_id)
    print(f"{report['verdict']}\t{drifted}")
    return report
