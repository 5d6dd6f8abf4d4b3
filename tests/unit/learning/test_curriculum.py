"""The drift story: the pool, the continual-learning summary, the simulation's rounds and the stage's params."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rotmnist.config import config_from_dict
from rotmnist.data.rotation import exhaustive_dataset
from rotmnist.errors import ConfigError, PipelineError
from rotmnist.io import Dataset
from rotmnist.learning import curriculum as drift_sim
from rotmnist.learning.training import Hyper, fit
from tests.support.helpers import tiny_mnist

SPEC = {"family": "cnn", "blocks": 1, "channels": 8, "kernel": 3, "dense": 32, "dropout": 0.0}
HP = Hyper(lr=0.01, batch_size=32, epochs=3)


def upright(x: np.ndarray, y: np.ndarray, first_id: int = 0) -> Dataset:
    n = len(x)
    ids = np.arange(first_id, first_id + n, dtype=np.int32)
    return Dataset(x=x, y=y, source_id=ids, angle=np.zeros(n, np.int8), mnist_split=np.zeros(n, np.int8))


@pytest.fixture(scope="module")
def splits() -> tuple[Dataset, Dataset]:
    """Synthetic train and holdout digits, each at every angle (as data/splits holds them)."""
    xt, yt, xh, yh = tiny_mnist(n_train=400, n_test=200, seed=0)
    return exhaustive_dataset(upright(xt, yt)), exhaustive_dataset(upright(xh, yh, first_id=1000))


def plan(**kw) -> drift_sim.Plan:
    settings = dict(
        arrivals=(0, -30, 30),
        initial_sources=200,
        increment=100,
        max_rounds=2,
        threshold=0.1,
        angle_threshold=0.2,
        monitor_sources=100,
    )
    return drift_sim.Plan(**(settings | kw))


# ---- the pool ------------------------------------------------------------------------------------------


def test_the_pool_only_grows_with_replay_and_holds_the_newest_increment_without(splits):
    train, _ = splits
    pool = drift_sim.Pool(train, seed=0)
    assert pool.add(50, (0,)) == 50
    seen: set[tuple[int, int]] = set()
    for angles in [(0,), (0, -30), (0, -30), (0, -30, 30)]:
        before = {(int(s), int(a)) for s, a in zip(pool.rows(True).source_id, pool.rows(True).angle, strict=True)}
        added = pool.add(40, angles)
        rows = pool.rows(replay=True)
        after = {(int(s), int(a)) for s, a in zip(rows.source_id, rows.angle, strict=True)}
        assert before < after and len(after) == len(before) + added == len(rows)
        newest = pool.rows(replay=False)
        assert len(newest) == added == 40 * len(angles)
        assert set(np.unique(newest.angle).tolist()) == set(angles)
        new = {(int(s), int(a)) for s, a in zip(newest.source_id, newest.angle, strict=True)}
        assert new == after - before and not new & seen
        seen |= new


def test_a_new_angle_starts_with_the_digits_the_pool_already_holds_upright(splits):
    pool = drift_sim.Pool(splits[0], seed=3)
    pool.add(30, (0,))
    pool.add(10, (0, -30))
    rows = pool.rows(replay=True)
    upright_ids = set(rows.source_id[rows.angle == 0].tolist())
    rotated_ids = set(rows.source_id[rows.angle == -30].tolist())
    assert len(upright_ids) == 40 and len(rotated_ids) == 10 and rotated_ids < upright_ids


def test_a_capped_retraining_keeps_the_newest_increment_whole_and_samples_the_rest(splits):
    pool = drift_sim.Pool(splits[0], seed=0)
    pool.add(100, (0,))
    pool.add(30, (0, -30))
    whole, newest = pool.rows(replay=True), pool.rows(replay=False)
    pairs = lambda ds: {(int(s), int(a)) for s, a in zip(ds.source_id, ds.angle, strict=True)}  # noqa: E731
    capped = pool.rows(replay=True, limit=100, seed=1)
    assert len(capped) == 100 and pairs(newest) < pairs(capped) < pairs(whole)
    assert pairs(capped) == pairs(pool.rows(replay=True, limit=100, seed=1))  # seeded
    assert pairs(capped) != pairs(pool.rows(replay=True, limit=100, seed=2))
    assert len(pool.rows(replay=True, limit=len(whole))) == len(whole)  # at or under the cap: the pool itself
    over = pool.rows(replay=False, limit=20, seed=0)  # the newest increment alone is over the cap: a sample of it
    assert len(over) == 20 and pairs(over) < pairs(newest)


def test_the_pool_runs_out_at_the_number_of_training_digits(splits):
    pool = drift_sim.Pool(splits[0], seed=0)
    assert pool.add(10_000, (0, 10)) == 2 * 400
    assert pool.exhausted((0, 10)) and not pool.exhausted((0, 20))
    assert pool.add(5, (0,)) == 0


# ---- the continual-learning summary ----------------------------------------------------------------------


def test_continual_summary_follows_gem():
    r = np.array([[0.9, 0.5, 0.4], [0.8, 0.95, 0.6], [0.85, 0.9, 0.99]])
    baseline = np.array([0.9, 0.5, 0.3])
    s = drift_sim.continual_summary(r, baseline)
    assert s["acc"] == pytest.approx((0.85 + 0.9 + 0.99) / 3)
    assert s["bwt"] == pytest.approx(((0.85 - 0.9) + (0.9 - 0.95)) / 2)  # forgetting is negative
    assert s["fwt"] == pytest.approx(((0.5 - 0.5) + (0.6 - 0.3)) / 2)
    assert drift_sim.continual_summary(np.array([[0.7]]), np.array([0.7])) == {"acc": 0.7, "bwt": 0.0, "fwt": 0.0}
    with pytest.raises(ValueError, match="square"):
        drift_sim.continual_summary(r[:2], baseline)


# ---- warm start ----------------------------------------------------------------------------------------


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


# ---- the simulation -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_upright_model_is_flagged_when_a_rotated_angle_arrives(splits):
    rounds: list[drift_sim.Round] = []
    sim = drift_sim.simulate(SPEC, HP, plan(), *splits, on_round=rounds.append)
    assert rounds == sim.rounds
    arrival = next(r for r in sim.rounds if r.phase == 1)
    assert sim.phases[0].satisfied and arrival.round == 0 and not arrival.trained
    assert arrival.train_per_angle == {0: sim.rounds[arrival.step - 1].train_images}  # still the upright model
    assert arrival.drift and arrival.monitor_error > plan().threshold
    assert arrival.holdout_accuracy[-30] < arrival.holdout_accuracy[0] - 0.2
    # every flagged round is followed by a retraining with more data, until the phase is satisfied
    for before, after in zip(sim.rounds, sim.rounds[1:], strict=False):
        if before.drift and after.phase == before.phase:
            assert after.trained and after.train_images > before.train_images
    report = drift_sim.report(sim, plan())
    assert report["rounds"] == len(sim.rounds) and set(report["final"]["accuracy"]) == {
        f"angle_{a}" for a in (-30, -20, -10, 0, 10, 20, 30)
    }
    assert list(report["phases"]) == ["0_angle_0", "1_angle_-30", "2_angle_30"]


@pytest.mark.slow
def test_an_unsatisfiable_phase_is_reported_and_the_story_goes_on(splits):
    p = plan(threshold=0.0, angle_threshold=0.0, max_rounds=1, arrivals=(0, 10))
    sim = drift_sim.simulate(SPEC, Hyper(lr=0.01, batch_size=32, epochs=1), p, *splits)
    assert [ph.satisfied for ph in sim.phases] == [False, False]
    assert [ph.rounds for ph in sim.phases] == [1, 1]
    assert "max_rounds = 1" in sim.phases[0].note
    report = drift_sim.report(sim, p)
    assert report["all_satisfied"] is False
    assert report["phases"]["1_angle_10"]["satisfied"] is False
    assert "null" not in repr(report) and None not in _leaves(report)


@pytest.mark.slow
def test_the_simulation_is_seeded_and_replay_off_trains_on_the_newest_data_only(splits):
    p = plan(replay=False, arrivals=(0, -30))
    first = drift_sim.report(drift_sim.simulate(SPEC, HP, p, *splits), p)
    again = drift_sim.simulate(SPEC, HP, p, *splits)
    assert drift_sim.report(again, p) == first
    retrained = [r for r in again.rounds if r.trained and r.step > 0]
    assert retrained and all(r.train_images == r.added_images for r in retrained)


def test_an_angle_missing_from_the_data_is_refused(splits):
    train, holdout = splits
    with pytest.raises(PipelineError, match=r"holdout split has no images at \[20\]"):
        drift_sim.simulate(SPEC, HP, plan(arrivals=(0, 20)), train, holdout.take(holdout.angle != 20))


def _leaves(obj):
    if isinstance(obj, dict):
        return [leaf for v in obj.values() for leaf in _leaves(v)]
    return [obj]


# ---- params ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "fragment"),
    [
        ({"arrivals": [0, 15]}, "curriculum.arrivals", "angles from [0, -30, -20, -10, 10, 20, 30]"),
        ({"arrivals": [0, 0]}, "curriculum.arrivals", "must not repeat"),
        ({"arrivals": []}, "curriculum.arrivals", "non-empty"),
        ({"increment": 0}, "curriculum.increment", "greater than or equal to 1"),
        ({"threshold": 1.5}, "curriculum.threshold", "less than or equal to 1"),
        ({"replay": "no"}, "curriculum.replay", "valid boolean"),
        ({"round_images": -1}, "curriculum.round_images", "greater than or equal to 0"),
        ({"model": {"family": "cnn", "kernel": 4}}, "curriculum.model", "cnn.kernel must be 3 or 5"),
        ({"model": {"family": "rnn"}}, "curriculum.model", "unknown family"),
        ({"warm_startt": True}, "curriculum.warm_startt", "unknown key"),
    ],
)
def test_bad_curriculum_params_are_refused_with_the_key_named(section, key, fragment):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"curriculum": section})
    assert f"  {key}:" in str(err.value) and fragment in str(err.value)
