"""The training loop's pieces, `fit` on a small easy problem, `learn_model`, and the best-params reader."""

from __future__ import annotations

import dataclasses
import json
import shutil
import types

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from rotmnist import learn
from rotmnist.config import config_from_dict
from rotmnist.errors import PipelineError
from rotmnist.io import Dataset
from rotmnist.learning import training
from rotmnist.learning.training import Hyper, fit, pixel_stats, random_shift, source_folds, subsample_sources
from rotmnist.paths import Paths
from tests.support.helpers import tiny_mnist


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine OpenMP threads only wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMALL_CNN = {"family": "cnn", "blocks": 2, "channels": 8, "dense": 32, "dropout": 0.0}


def dataset(n: int, seed: int = 0, copies: int = 1) -> Dataset:
    """`n` synthetic digits (easy: jittered seven-segment strokes), each repeated `copies` times as one source."""
    x, y, _, _ = tiny_mnist(n_train=n, n_test=10, seed=seed)
    k = len(x)
    return Dataset(
        x=np.repeat(x, copies, axis=0),
        y=np.repeat(y, copies),
        source_id=np.repeat(np.arange(k, dtype=np.int32), copies),
        angle=np.zeros(k * copies, np.int8),
        mnist_split=np.zeros(k * copies, np.int8),
    )


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"lr": 0.0}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"shift": 9}, "shift"),
        ({"schedule": "step"}, "schedule"),
        ({"rotations_per_epoch": -1}, "rotations_per_epoch"),
        ({"ema": 1.0}, "ema"),
    ],
)
def test_hyper_rejects_bad_settings(kwargs, bad):
    with pytest.raises(ValueError, match=rf"invalid training settings \['{bad}'\]"):
        Hyper(**kwargs)


def test_pixel_stats_are_exact():
    x = np.random.default_rng(0).integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    mean, std = pixel_stats(x)
    assert mean == pytest.approx(x.mean()) and std == pytest.approx(x.std())
    with pytest.raises(ValueError, match="empty"):
        pixel_stats(x[:0])


def test_subsample_sources_keeps_every_rotation_of_a_chosen_source():
    ds = dataset(40, copies=7)
    sub = subsample_sources(ds, 0.25, seed=1)
    ids, counts = np.unique(sub.source_id, return_counts=True)
    assert len(ids) == 10 and set(counts) == {7}
    assert np.array_equal(subsample_sources(ds, 0.25, seed=1).source_id, sub.source_id)  # seeded
    assert subsample_sources(ds, 1.0, seed=1) is ds
    with pytest.raises(ValueError, match=r"fraction must lie in \(0, 1\]"):
        subsample_sources(ds, 0.0, seed=1)


def test_source_folds_partition_the_rows_by_source():
    ds = dataset(30, copies=3)
    folds = source_folds(ds, 4, seed=0)
    assert len(folds) == 4
    val_rows = np.concatenate([v for _, v in folds])
    assert np.array_equal(np.sort(val_rows), np.arange(len(ds)))  # each row validates exactly once
    for fit_rows, val in folds:
        assert not set(ds.source_id[fit_rows]) & set(ds.source_id[val])
        assert len(fit_rows) + len(val) == len(ds)
    with pytest.raises(ValueError, match="need 2 <= k <= number of source images"):
        source_folds(ds, 31, seed=0)


def test_random_shift_moves_each_image_by_at_most_max_shift():
    x = torch.zeros(64, 28, 28, dtype=torch.uint8)
    x[:, 12:16, 12:16] = 255  # a square well inside the frame
    gen = torch.Generator().manual_seed(0)
    assert random_shift(x, 0, gen) is x
    out = random_shift(x, 2, gen)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out.sum((1, 2)), x.sum((1, 2)))  # nothing cropped, nothing added
    rows = out.amax(2).float().argmax(1)  # first row holding ink
    cols = out.amax(1).float().argmax(1)
    assert set((rows - 12).tolist()) == {-2, -1, 0, 1, 2} and set((cols - 12).tolist()) == {-2, -1, 0, 1, 2}


def test_fit_beats_chance_by_far_and_is_seeded():
    train_ds, val_ds = dataset(400, seed=0), dataset(100, seed=1)
    seen = []
    hp = Hyper(lr=1e-2, batch_size=16, epochs=3, shift=1)
    result = fit(SMALL_CNN, train_ds, val_ds, hp, seed=3, on_epoch=seen.append)
    assert [m["epoch"] for m in seen] == [1, 2, 3] and seen == result.history
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "images_per_second"} <= set(seen[0])
    assert result.history[-1]["val_accuracy"] >= 0.8  # chance is 0.1
    assert not result.model.training
    again = fit(SMALL_CNN, train_ds, val_ds, hp, seed=3)
    for a, b in zip(result.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_epoch_rows_draw_up_to_k_rotations_of_every_source_afresh_each_epoch():
    source_id = np.repeat(np.arange(30, dtype=np.int32), 7)[np.random.default_rng(0).permutation(210)]
    source_id = np.concatenate([source_id, [99]])  # a source with a single row
    gen = torch.Generator().manual_seed(0)
    for k in (1, 3, 7, 9):
        rows = training.EpochRows(source_id, k)
        drawn = rows.draw(gen).numpy()
        assert len(drawn) == len(rows) == 30 * min(k, 7) + 1 and len(set(drawn)) == len(drawn)
        ids, counts = np.unique(source_id[drawn], return_counts=True)
        assert len(ids) == 31 and set(counts[:-1]) == {min(k, 7)} and counts[-1] == 1
    rows = training.EpochRows(source_id, 1)
    epochs = [rows.draw(gen).numpy() for _ in range(20)]
    assert len({tuple(np.sort(e)) for e in epochs}) == 20  # another rotation of the sources each epoch
    assert len(np.unique(np.concatenate(epochs))) > 0.9 * len(source_id)  # and over epochs nearly every row
    assert not np.array_equal(epochs[0], np.sort(epochs[0]))  # shuffled, not grouped by source
    every = training.EpochRows(source_id, 0)
    assert len(every) == len(source_id) and sorted(every.draw(gen).tolist()) == list(range(len(source_id)))


def test_an_epoch_of_one_rotation_per_source_trains_on_that_many_images():
    ds = dataset(100, copies=7)
    hp = Hyper(lr=1e-2, batch_size=32, epochs=8, rotations_per_epoch=1)
    steps = []
    result = fit(SMALL_CNN, ds, None, hp, on_epoch=steps.append)
    n = len(np.unique(ds.source_id))
    assert n < len(ds) // 6
    assert all(m["epoch_images"] == n for m in steps)
    assert all(m["images_per_second"] * m["epoch_seconds"] == pytest.approx(n) for m in steps)
    assert result.history[-1]["lr"] < hp.lr / 100  # the one-cycle schedule ends on the epochs' real step count


def test_the_weight_average_lags_the_trained_weights_and_is_what_fit_returns():
    torch.manual_seed(0)
    model = training.classifier_from_spec(SMALL_CNN)
    average = training.WeightAverage(model, decay=0.9)
    start = {k: v.clone() for k, v in average.model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update()  # warm-up: decay min(0.9, 2/11) moves it 9/11 of the way
    for k, v in average.model.state_dict().items():
        if v.dtype.is_floating_point and k.startswith("net.0.weight"):
            assert torch.allclose(v, start[k] + 9 / 11, atol=1e-6)
    hp = Hyper(lr=1e-2, batch_size=16, epochs=3, shift=1, ema=0.99)
    seen = []
    train_ds, val_ds = dataset(400, seed=0), dataset(100, seed=1)
    result = fit(SMALL_CNN, train_ds, val_ds, hp, seed=3, on_epoch=seen.append)
    plain = fit(SMALL_CNN, train_ds, val_ds, dataclasses.replace(hp, ema=0.0), seed=3)
    assert result.history[-1]["val_accuracy"] >= 0.8 and not result.model.training
    assert not torch.equal(result.model.net[0].weight, plain.model.net[0].weight)
    assert seen[-1]["val_accuracy"] == training.evaluate(result.model, val_ds.x, val_ds.y)["accuracy"]


def test_val_is_scored_every_few_epochs_and_after_the_last():
    seen = []
    fit({"family": "logreg"}, dataset(50), dataset(20, seed=1), Hyper(epochs=5), on_epoch=seen.append, score_every=2)
    assert [("val_accuracy" in m) for m in seen] == [False, True, False, True, True]


def test_fit_in_bf16_learns_and_keeps_float32_weights():
    # bf16 autocast covers the training step only: the model it returns is float32 like any other.
    hp = Hyper(lr=1e-2, batch_size=16, epochs=3, shift=1, precision="bf16")
    result = fit(SMALL_CNN, dataset(400, seed=0), dataset(100, seed=1), hp, seed=3)
    assert result.history[-1]["val_accuracy"] >= 0.8
    assert {p.dtype for p in result.model.parameters()} == {torch.float32}


@pytest.mark.parametrize("n", [64, 256, 400])  # 1, 4 and 7 steps: too short for a one-cycle schedule
def test_very_short_runs_train_with_a_constant_learning_rate(n):
    result = fit({"family": "logreg"}, dataset(n), None, Hyper(batch_size=64, epochs=1, schedule="onecycle"))
    assert result.history[0]["lr"] == Hyper().lr


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_is_bf16_only_where_the_cpu_runs_it_natively(monkeypatch, native, expected):
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert training.resolve_precision("auto", cpu) == expected
    assert training.hyper_dict(Hyper(precision="auto"), cpu)["precision"] == expected  # what MLflow records
    assert training.resolve_precision("fp32", cpu) == "fp32" and training.resolve_precision("bf16", cpu) == "bf16"


def test_resolve_precision_refuses_unknown_names():
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match=r"precision must be one of \['auto', 'fp32', 'bf16'\]"):
        training.resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="precision one of"):
        Hyper(precision="fp16")


def test_an_epoch_callback_can_stop_training():
    class Stop(Exception):
        pass

    def stop(metrics):
        raise Stop(metrics["epoch"])

    with pytest.raises(Stop, match="1"):
        fit({"family": "logreg"}, dataset(50), dataset(20, seed=1), Hyper(epochs=5), on_epoch=stop)


def test_fit_rejects_an_empty_training_set():
    with pytest.raises(ValueError, match="training set is empty"):
        fit({"family": "logreg"}, dataset(10).take(np.zeros(10, bool)), None, Hyper())


def test_resolve_device():
    assert training.resolve_device("cpu").type == "cpu"
    assert training.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(PipelineError, match=r"train.device must be one of \['auto', 'cpu', 'cuda'\]"):
        training.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(PipelineError, match="no CUDA device"):
            training.resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_on_the_gpu_matches_the_cpu_contract():
    result = fit(SMALL_CNN, dataset(400), dataset(100, seed=1), Hyper(lr=1e-2, batch_size=16, epochs=3), device="cuda")
    assert next(result.model.parameters()).device.type == "cuda"
    assert result.history[-1]["val_accuracy"] >= 0.8


def test_as_dataset_accepts_objects_with_x_and_y_and_validates_them():
    x, y, _, _ = tiny_mnist(n_train=20, n_test=10)
    ds = learn.as_dataset(types.SimpleNamespace(x=x, y=y))
    assert len(ds) == 20 and np.array_equal(ds.source_id, np.arange(20))
    with pytest.raises(TypeError, match=r"must be a rotmnist.io.Dataset or have numpy arrays .x and .y"):
        learn.as_dataset([x, y])
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        learn.as_dataset(types.SimpleNamespace(x=x[:, :20], y=y))
    with pytest.raises(ValueError, match="digits 0-9"):
        learn.as_dataset(types.SimpleNamespace(x=x, y=y + 10))
    with pytest.raises(ValueError, match=r"scaled to \[0, 1\]; pass values in 0..255"):
        learn.as_dataset(types.SimpleNamespace(x=x / 255.0, y=y))
    with pytest.raises(ValueError, match="whole digits 0-9"):
        learn.as_dataset(types.SimpleNamespace(x=x, y=y + 0.5))
    with pytest.raises(ValueError, match="source_id must be integers, one per image"):
        learn.as_dataset(types.SimpleNamespace(x=x, y=y, source_id=np.arange(20) + 0.5))
    with pytest.raises(ValueError, match=r"source_id must be in 0..2\*\*31-1"):
        learn.as_dataset(types.SimpleNamespace(x=x, y=y, source_id=np.full(20, 3_000_000_000)))
    assert len(learn.as_dataset(types.SimpleNamespace(x=np.zeros((3, 28, 28)), y=np.zeros(3)))) == 3  # black images
    with pytest.raises(ValueError, match=r"must be in 0..255"):
        learn.as_dataset(types.SimpleNamespace(x=x.astype(np.int16) - 1, y=y))
    with pytest.raises(ValueError, match="NaN or infinite"):
        learn.as_dataset(types.SimpleNamespace(x=np.full(x.shape, np.nan), y=y))


def test_as_dataset_keeps_float_pixels_and_given_sources():
    x, y, _, _ = tiny_mnist(n_train=20, n_test=10)
    sources = np.arange(20) // 2
    ds = learn.as_dataset(types.SimpleNamespace(x=x.astype(np.float32), y=y, source_id=sources))
    assert np.array_equal(ds.x, x) and np.array_equal(ds.source_id, sources)


@pytest.fixture
def ws(tmp_path, monkeypatch, empty_store) -> Paths:
    """A workspace with its own (initialised) SQLite MLflow store and journal."""
    db = tmp_path / "mlflow.db"
    shutil.copy(empty_store, db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.delenv("ROTMNIST_OPTUNA_STORAGE", raising=False)
    return Paths(root=tmp_path, store_root=tmp_path)


TINY = {
    "tune": {
        "n_trials": 2,
        "epochs": 2,
        "train_fraction": 1.0,
        "val_fraction": 1.0,
        "space": {
            "lr": [0.005, 0.01],
            "batch_size": [16],
            "dropout": [0.0, 0.1],
            "cnn": {"channels": [8], "dense": [32], "blocks": [2]},
        },
    },
    "train": {"epochs": 3, "shift": 0, "num_threads": 1},
    "split": {"val_fraction": 0.2},
    "mlflow": {"experiment": "learn"},
}


@pytest.mark.slow  # a sweep and a training run
@pytest.mark.parametrize("cv_folds", [1, 2])
def test_learn_model_returns_a_tuned_model_far_better_than_chance(ws, cv_folds):
    config = config_from_dict(TINY | {"tune": TINY["tune"] | {"cv_folds": cv_folds}})
    data = dataset(400, seed=0)
    model = learn.learn_model(data, config=config, paths=ws)
    held_out = dataset(200, seed=5)
    accuracy = float(np.mean(model.predict(held_out.x) == held_out.y))
    assert accuracy >= 0.8, accuracy  # chance is 0.1
    runs = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("learn").experiment_id])
    assert sum("mlflow.parentRunId" in r.data.tags for r in runs) == 2  # one child run per trial


def test_learn_model_rejects_an_empty_dataset(ws):
    with pytest.raises(ValueError, match="non-empty dataset"):
        learn.learn_model(dataset(10).take(np.zeros(10, bool)), config=config_from_dict(TINY), paths=ws)


def test_read_best_params(tmp_path):
    path = tmp_path / "best_params.json"
    with pytest.raises(PipelineError, match="run `rotmnist tune` first"):
        training.read_best_params(path)
    path.write_text("{not json")
    with pytest.raises(PipelineError, match="not valid JSON"):
        training.read_best_params(path)
    path.write_text(json.dumps({"spec": {"family": "cnn"}}))
    with pytest.raises(PipelineError, match="objects 'spec' and 'hyper'"):
        training.read_best_params(path)
    path.write_text(json.dumps({"spec": {"family": "cnn", "kernel": 7}, "hyper": {}}))
    with pytest.raises(PipelineError, match=r"cnn\.kernel must be 3 or 5"):
        training.read_best_params(path)
    path.write_text(json.dumps({"spec": {"family": "mlp"}, "hyper": {"lr": 0.01, "weight_decay": 0.0}}))
    with pytest.raises(PipelineError, match="batch_size"):
        training.read_best_params(path)
    doc = {"spec": {"family": "mlp"}, "hyper": {"lr": 0.01, "weight_decay": 0.0, "batch_size": 64}, "trial": 3}
    path.write_text(json.dumps(doc))
    spec, hyper, whole = training.read_best_params(path)
    assert spec["family"] == "mlp" and spec["width"] == 256 and hyper == doc["hyper"] and whole["trial"] == 3


def test_train_metrics_leave_out_what_has_no_value(monkeypatch):
    """No rotated test image and no val split: the keys are absent, never null (DVC cannot show a null)."""
    from rotmnist.io import metrics_problems
    from rotmnist.stages import train

    upright = Dataset(
        x=np.zeros((4, 28, 28), np.uint8),
        y=np.array([0, 1, 2, 3], np.uint8),
        source_id=np.arange(4, dtype=np.int32),
        angle=np.zeros(4, np.int8),
        mnist_split=np.ones(4, np.int8),
    )
    monkeypatch.setattr(train, "predict_labels", lambda model, x: np.array([0, 1, 2, 0]))
    report = train.test_report(None, upright)
    assert report["accuracy"] == 0.75 and "worst_rotated_accuracy" not in report
    summary = train.summary(report, {}, [{"images_per_second": 100.0, "epoch_images": 4}], 1, 4)
    assert summary["images_trained"] == 4
    assert "val_accuracy" not in summary and "worst_rotated_accuracy" not in summary["test"]
    assert metrics_problems(summary) == []
    assert "test_worst_rotated_accuracy" not in train.run_metrics(report, {}, {"latency_ms_single_image": 1.0})
    rotated = upright.take(np.arange(4))
    rotated = Dataset(**{**rotated.__dict__, "angle": np.array([0, 0, 10, 10], np.int8)})
    assert train.test_report(None, rotated)["worst_rotated_accuracy"] == 0.5
    # Source 3's two rotations are both misread: a floor no rotation robustness lifts.
    rotated = Dataset(**{**rotated.__dict__, "source_id": np.array([0, 1, 3, 3], np.int32)})
    monkeypatch.setattr(train, "predict_labels", lambda model, x: np.array([0, 1, 0, 0]))
    report = train.test_report(None, rotated)
    assert report["every_angle_errors"] == {"sources": 3, "sources_wrong_at_every_angle": 1, "share_of_errors": 1.0}
    assert train.run_metrics(report, {}, {})["test_sources_wrong_at_every_angle"] == 1
