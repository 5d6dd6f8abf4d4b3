"""The drift simulation: the continual-learning summary and the simulation's rounds."""

from __future__ import annotations

import numpy as np
import pytest

from rotmnist.errors import PipelineError
from rotmnist.learning import curriculum
from rotmnist.learning.recipe import Hyper

SPEC = {"family": "cnn", "blocks": 1, "channels": 8, "kernel": 3, "dense": 32, "dropout": 0.0}
HP = Hyper(lr=0.01, batch_size=32, epochs=3)


def plan(**kw) -> curriculum.Plan:
    settings = dict(
        arrivals=(0, -30, 30),
        initial_sources=200,
        increment=100,
        max_rounds=2,
        threshold=0.1,
        angle_threshold=0.2,
        monitor_sources=100,
    )
    return curriculum.Plan(**(settings | kw))


# ---- the continual-learning summary ----------------------------------------------------------------------


def test_continual_summary_follows_gem():
    r = np.array([[0.9, 0.5, 0.4], [0.8, 0.95, 0.6], [0.85, 0.9, 0.99]])
    baseline = np.array([0.9, 0.5, 0.3])
    s = curriculum.continual_summary(r, baseline)
    assert s["acc"] == pytest.approx((0.85 + 0.9 + 0.99) / 3)
    assert s["bwt"] == pytest.approx(((0.85 - 0.9) + (0.9 - 0.95)) / 2)  # forgetting is negative
    assert s["fwt"] == pytest.approx(((0.5 - 0.5) + (0.6 - 0.3)) / 2)
    assert curriculum.continual_summary(np.array([[0.7]]), np.array([0.7])) == {"acc": 0.7, "bwt": 0.0, "fwt": 0.0}
    with pytest.raises(ValueError, match="square"):
        curriculum.continual_summary(r[:2], baseline)


# ---- the simulation -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_upright_model_is_flagged_when_a_rotated_angle_arrives(splits):
    rounds: list[curriculum.Round] = []
    sim = curriculum.simulate(SPEC, HP, plan(), *splits, on_round=rounds.append)
    assert rounds == sim.rounds
    arrival = next(r for r in sim.rounds if r.phase == 1)
    assert sim.phases[0].satisfied and arrival.round == 0 and not arrival.trained
    assert arrival.train_per_angle == {0: sim.rounds[arrival.step - 1].train_images}  # still the upright model
    assert arrival.concept_drift and arrival.monitor_error > plan().threshold
    assert arrival.holdout_accuracy[-30] < arrival.holdout_accuracy[0] - 0.2
    # every flagged round is followed by a retraining with more data, until the phase is satisfied
    for before, after in zip(sim.rounds, sim.rounds[1:], strict=False):
        if before.concept_drift and after.phase == before.phase:
            assert after.trained and after.train_images > before.train_images
    report = curriculum.report(sim, plan())
    assert report["rounds"] == len(sim.rounds) and set(report["final"]["accuracy"]) == {
        f"angle_{a}" for a in (-30, -20, -10, 0, 10, 20, 30)
    }
    assert list(report["phases"]) == ["0_angle_0", "1_angle_-30", "2_angle_30"]


@pytest.mark.slow
def test_an_unsatisfiable_phase_is_reported_and_the_story_goes_on(splits):
    p = plan(threshold=0.0, angle_threshold=0.0, max_rounds=1, arrivals=(0, 10))
    sim = curriculum.simulate(SPEC, Hyper(lr=0.01, batch_size=32, epochs=1), p, *splits)
    assert [ph.satisfied for ph in sim.phases] == [False, False]
    assert [ph.rounds for ph in sim.phases] == [1, 1]
    assert "max_rounds = 1" in sim.phases[0].note
    report = curriculum.report(sim, p)
    assert report["all_satisfied"] is False
    assert report["phases"]["1_angle_10"]["satisfied"] is False
    assert "null" not in repr(report) and None not in _leaves(report)


@pytest.mark.slow
def test_the_simulation_is_seeded_and_replay_off_trains_on_the_newest_data_only(splits):
    p = plan(replay=False, arrivals=(0, -30))
    first = curriculum.report(curriculum.simulate(SPEC, HP, p, *splits), p)
    again = curriculum.simulate(SPEC, HP, p, *splits)
    assert curriculum.report(again, p) == first
    retrained = [r for r in again.rounds if r.trained and r.step > 0]
    assert retrained and all(r.train_images == r.added_images for r in retrained)


def test_an_angle_missing_from_the_data_is_refused(splits):
    train, holdout = splits
    with pytest.raises(PipelineError, match=r"holdout split has no images at \[20\]"):
        curriculum.simulate(SPEC, HP, plan(arrivals=(0, 20)), train, holdout.take(holdout.angle != 20))


def _leaves(obj):
    if isinstance(obj, dict):
        return [leaf for v in obj.values() for leaf in _leaves(v)]
    return [obj]
