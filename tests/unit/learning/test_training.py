"""The training loop's pieces and `fit` on a small easy problem, cold and warm-started."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rotmnist.data.dataset import FEEDBACK
from rotmnist.errors import PipelineError
from rotmnist.learning import training
from rotmnist.learning.recipe import Hyper
from rotmnist.learning.training import fit, pixel_stats, random_shift
from tests.support.datasets import digit_dataset

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/unit/conftest.py


SMALL_CNN = {"family": "cnn", "blocks": 2, "channels": 8, "dense": 32, "dropout": 0.0}


def test_pixel_stats_are_exact():
    x = np.random.default_rng(0).integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    mean, std = pixel_stats(x)
    assert mean == pytest.approx(x.mean()) and std == pytest.approx(x.std())
    with pytest.raises(ValueError, match="empty"):
        pixel_stats(x[:0])


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
    train_ds, val_ds = digit_dataset(400, seed=0), digit_dataset(100, seed=1)
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
    ds = digit_dataset(100, copies=7)
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
    train_ds, val_ds = digit_dataset(400, seed=0), digit_dataset(100, seed=1)
    result = fit(SMALL_CNN, train_ds, val_ds, hp, seed=3, on_epoch=seen.append)
    plain = fit(SMALL_CNN, train_ds, val_ds, dataclasses.replace(hp, ema=0.0), seed=3)
    assert result.history[-1]["val_accuracy"] >= 0.8 and not result.model.training
    assert not torch.equal(result.model.net[0].weight, plain.model.net[0].weight)
    assert seen[-1]["val_accuracy"] == training.evaluate(result.model, val_ds.x, val_ds.y)["accuracy"]


def test_val_is_scored_every_few_epochs_and_after_the_last():
    seen = []
    fit(
        {"family": "logreg"},
        digit_dataset(50),
        digit_dataset(20, seed=1),
        Hyper(epochs=5),
        on_epoch=seen.append,
        score_every=2,
    )
    assert [("val_accuracy" in m) for m in seen] == [False, True, False, True, True]


def test_fit_in_bf16_learns_and_keeps_float32_weights():
    # bf16 autocast covers the training step only: the model it returns is float32 like any other.
    hp = Hyper(lr=1e-2, batch_size=16, epochs=3, shift=1, precision="bf16")
    result = fit(SMALL_CNN, digit_dataset(400, seed=0), digit_dataset(100, seed=1), hp, seed=3)
    assert result.history[-1]["val_accuracy"] >= 0.8
    assert {p.dtype for p in result.model.parameters()} == {torch.float32}


@pytest.mark.parametrize("n", [64, 256, 400])  # 1, 4 and 7 steps: too short for a one-cycle schedule
def test_very_short_runs_train_with_a_constant_learning_rate(n):
    result = fit({"family": "logreg"}, digit_dataset(n), None, Hyper(batch_size=64, epochs=1, schedule="onecycle"))
    assert result.history[0]["lr"] == Hyper().lr


def test_an_epoch_callback_can_stop_training():
    class Stop(Exception):
        pass

    def stop(metrics):
        raise Stop(metrics["epoch"])

    with pytest.raises(Stop, match="1"):
        fit({"family": "logreg"}, digit_dataset(50), digit_dataset(20, seed=1), Hyper(epochs=5), on_epoch=stop)


def test_fit_leaves_the_callers_global_rng_as_it_was_and_does_not_depend_on_it():
    spec = SMALL_CNN | {"dropout": 0.25}  # dropout draws from the global RNG while training
    hp, ds = Hyper(lr=1e-2, batch_size=32, epochs=1, shift=1), digit_dataset(100)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    expected = torch.rand(4)  # the caller's next draws
    torch.set_rng_state(before)
    first = fit(spec, ds, None, hp, seed=5).model.state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(torch.rand(4), expected)
    second = fit(spec, ds, None, hp, seed=5).model.state_dict()  # the caller's RNG is elsewhere now
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_fit_rejects_an_empty_training_set():
    with pytest.raises(ValueError, match="training set is empty"):
        fit({"family": "logreg"}, digit_dataset(10).take(np.zeros(10, bool)), None, Hyper())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_on_the_gpu_matches_the_cpu_contract():
    result = fit(
        SMALL_CNN,
        digit_dataset(400),
        digit_dataset(100, seed=1),
        Hyper(lr=1e-2, batch_size=16, epochs=3),
        device="cuda",
    )
    assert next(result.model.parameters()).device.type == "cuda"
    assert result.history[-1]["val_accuracy"] >= 0.8
    torch.cuda.manual_seed(7)
    before = torch.cuda.get_rng_state()
    fit(SMALL_CNN | {"dropout": 0.25}, digit_dataset(100), None, Hyper(batch_size=32, epochs=1), device="cuda")
    assert torch.equal(torch.cuda.get_rng_state(), before)  # the GPU's global RNG is left as it was too


SPEC = {"family": "cnn", "blocks": 1, "channels": 8, "kernel": 3, "dense": 32, "dropout": 0.0}


def test_fit_warm_starts_from_a_model_without_changing_it(splits):
    train = splits[0].take(splits[0].angle == 0)
    first = fit(SPEC, train, None, Hyper(batch_size=64, epochs=1), seed=0).model
    before = {k: v.clone() for k, v in first.state_dict().items()}
    warm = fit(SPEC, train, None, Hyper(batch_size=64, epochs=1, lr=1e-9), seed=1, init=first).model
    assert all(torch.equal(before[k], v) for k, v in first.state_dict().items())
    # with a vanishing learning rate the warm model keeps the first model's weights and pixel normalisation
    # (batch norm's running statistics do move: they follow the data, not the learning rate)
    kept = [name for name, _ in warm.named_parameters()] + ["mean", "std"]
    for k in kept:
        torch.testing.assert_close(warm.state_dict()[k], before[k], atol=1e-5, rtol=0, msg=k)
    fresh = fit(SPEC, train, None, Hyper(batch_size=64, epochs=1, lr=1e-9), seed=1).model
    assert not torch.allclose(fresh.state_dict()["net.0.weight"], before["net.0.weight"])
    other = {**SPEC, "channels": 4}
    with pytest.raises(PipelineError, match="cannot warm-start"):
        fit(other, train, None, Hyper(epochs=1), init=first)


def test_corrections_weigh_feedback_weight_in_the_loss_and_weight_one_changes_nothing():
    train_ds = digit_dataset(200, seed=0)
    marked = dataclasses.replace(train_ds, mnist_split=np.where(np.arange(200) < 20, FEEDBACK, 0).astype(np.int8))
    hp = Hyper(lr=1e-2, batch_size=16, epochs=2)
    weights = training.row_weights(marked, dataclasses.replace(hp, feedback_weight=3.0), torch.device("cpu"))
    assert weights.tolist() == [3.0] * 20 + [1.0] * 180
    assert training.row_weights(marked, hp, torch.device("cpu")) is None  # weight 1: the plain mean loss
    assert training.row_weights(train_ds, dataclasses.replace(hp, feedback_weight=3.0), torch.device("cpu")) is None
    plain = fit(SMALL_CNN, train_ds, None, hp, seed=1).model.state_dict()
    same = fit(SMALL_CNN, marked, None, hp, seed=1).model.state_dict()
    heavy = fit(SMALL_CNN, marked, None, dataclasses.replace(hp, feedback_weight=3.0), seed=1).model.state_dict()
    assert all(torch.equal(plain[k], same[k]) for k in plain)
    assert not all(torch.equal(plain[k], heavy[k]) for k in plain)
