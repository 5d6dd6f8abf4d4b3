"""`rotmnist drift` through the CLI: logged streams of digits against the training split, without labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from scipy import ndimage

from rotmnist import cli
from rotmnist.data.dataset import Dataset, save_dataset
from rotmnist.data.rotation import rotate_batch
from rotmnist.spec import ALLOWED_ANGLES
from rotmnist.storage.request_log import RequestLog
from rotmnist.tracking import registry
from tests.support.helpers import tiny_mnist
from tests.support.serving import champion_store

pytestmark = pytest.mark.slow  # a registered model and a few hundred scored digits per stream

NAME = "digits"
RECENT = 300


def rotated(x: np.ndarray, angle: float) -> np.ndarray:
    """`x` turned by any angle, the way `rotate` turns by the allowed ones (positive: counter-clockwise)."""
    out = ndimage.rotate(x.astype(np.float32), angle, axes=(2, 1), reshape=False, order=1)
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, empty_store):
    """A workspace whose train split holds digits at every trained angle, and a registered champion."""
    folder = tmp_path_factory.mktemp("drift")
    x, y, _, _ = tiny_mnist(n_train=400, n_test=10, seed=3)
    blocks = [x, *(rotate_batch(x, a) for a in ALLOWED_ANGLES)]
    n = len(blocks) * len(x)
    train = Dataset(
        x=np.concatenate(blocks),
        y=np.tile(y, len(blocks)),
        source_id=np.tile(np.arange(len(x), dtype=np.int32), len(blocks)),
        angle=np.repeat(np.array([0, *ALLOWED_ANGLES], np.int8), len(x)),
        mnist_split=np.zeros(n, np.int8),
    )
    save_dataset(train, folder / "data" / "splits" / "train")
    with champion_store(folder, empty_store, NAME):
        yield folder


def serve_stream(ws: Path, name: str, images: np.ndarray) -> None:
    """Log `images` as the server does (with the champion's probabilities) into the log `name`; point params at it."""
    model = registry.load_model(f"models:/{NAME}@champion")
    log = RequestLog.open(f"sqlite:///{ws / f'{name}.db'}")
    log.start()
    for i in range(0, len(images), 50):
        part = images[i : i + 50].astype(np.float32)
        log.record(part, model.predict_proba(part), NAME, "1", "/score", "json")
    assert log.flush(30)
    log.stop()
    params = {
        "monitor": {"model_name": NAME},
        "serve": {"request_log": f"sqlite:///{ws / f'{name}.db'}"},
        "drift": {"recent": RECENT, "reference": 2000},
    }
    (ws / "params.yaml").write_text(yaml.safe_dump(params))


def check(ws: Path, capsys) -> dict:
    capsys.readouterr()
    assert cli.main(["drift"]) == 0
    report = json.loads((ws / "metrics" / "drift.json").read_text())
    assert capsys.readouterr().out.startswith(report["verdict"])
    return report


def stream(angles: list[float], seed: int) -> np.ndarray:
    x = tiny_mnist(n_train=RECENT, n_test=10, seed=seed)[0]
    parts = np.array_split(x, len(angles))
    return np.concatenate([p if a == 0 else rotated(p, a) for p, a in zip(parts, angles, strict=True)])


def test_digits_at_the_trained_angles_are_not_flagged(ws, capsys):
    serve_stream(ws, "trained", stream([0, *ALLOWED_ANGLES], seed=11))
    report = check(ws, capsys)
    assert report["verdict"] == "ok", report
    assert report["recent_images"] == RECENT and report["reference_images"] == 2000
    assert report["model"] == f"models:/{NAME}/1"
    assert (ws / "plots" / "drift.png").stat().st_size > 10_000


@pytest.mark.parametrize("angles", [[45], [-45], [60], [45, -45]])
def test_digits_tilted_beyond_the_trained_angles_are_harmful(ws, capsys, angles):
    serve_stream(ws, f"tilted{angles[0]}", stream(angles, seed=12))
    report = check(ws, capsys)
    assert report["verdict"] == "harmful", report
    assert "tilt_degrees" in report["drifted"]


def test_upright_digits_alone_are_narrower_not_harmful(ws, capsys):
    serve_stream(ws, "upright", stream([0], seed=13))
    report = check(ws, capsys)
    assert report["verdict"] == "narrower", report
    tilt = report["features"]["tilt_degrees"]
    assert tilt["drifted"] and tilt["outside_share"] < 0.1


def test_each_check_is_an_mlflow_run_with_its_verdict(ws, capsys):
    serve_stream(ws, "runs", stream([60], seed=14))
    check(ws, capsys)
    client = MlflowClient()
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], filter_string="tags.role = 'input_drift'"
    )
    latest = max(runs, key=lambda r: r.info.start_time)
    assert latest.data.tags["verdict"] == "harmful" and latest.data.metrics["tilt_degrees_drifted"] == 1.0
    artifacts = {a.path for a in client.list_artifacts(latest.info.run_id, "input_drift")}
    assert artifacts == {"input_drift/drift.json", "input_drift/drift.png"}
    assert latest.info.run_name == "input-drift-harmful"


def test_a_log_with_too_few_images_is_a_one_line_error(ws, capsys):
    serve_stream(ws, "few", stream([0], seed=15)[:10])
    capsys.readouterr()
    assert cli.main(["drift"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("rotmnist drift: the request log") and "holds 10 scored images" in err
