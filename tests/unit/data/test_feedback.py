"""People's corrections as data: order, one row per request, the split by request id, round trips."""

from __future__ import annotations

import numpy as np
import pytest

from rotmnist.data import feedback
from rotmnist.data.dataset import FEEDBACK, load_dataset
from rotmnist.errors import PipelineError

RNG = np.random.default_rng(0)


def ids(n: int, start: int = 0) -> list[str]:
    return [f"{i:032x}" for i in range(start, start + n)]


def made(n: int, start: int = 0, label: int | None = None) -> feedback.Corrections:
    images = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.full(n, label) if label is not None else RNG.integers(0, 10, n)
    times = 1000.0 + np.arange(start, start + n)
    return feedback.corrections(images, labels, ids(n, start), times, times + 5)


def test_rows_are_sorted_by_time_one_per_request_each_its_own_negative_source():
    images = np.stack([np.full((28, 28), v, np.uint8) for v in (1, 2, 3, 4)])
    rid = ids(3) + ids(1)  # the last repeats the first request
    c = feedback.corrections(images, np.array([7, 8, 9, 0]), rid, np.array([30.0, 10.0, 20.0, 5.0]), np.zeros(4))
    assert c.request_id.tolist() == [ids(3)[1], ids(3)[2], ids(3)[0]]
    assert c.data.x[:, 0, 0].tolist() == [2, 3, 1] and c.data.y.tolist() == [8, 9, 7]  # the first of a repeat wins
    assert c.data.source_id.tolist() == [-1, -2, -3]
    assert (c.data.angle == 0).all() and (c.data.mnist_split == FEEDBACK).all()


@pytest.mark.parametrize(
    ("labels", "rid", "message"),
    [([10], ids(1), "label 10 is not a digit 0-9"), ([3], ["abc"], "'abc' is not 32 characters")],
)
def test_a_bad_label_or_request_id_is_named(labels, rid, message):
    with pytest.raises(ValueError, match=message):
        feedback.corrections(np.zeros((1, 28, 28), np.uint8), np.array(labels), rid, np.zeros(1), np.zeros(1))


def test_merge_keeps_what_is_known_and_adds_only_new_requests():
    old, new = made(5), made(5, start=3)  # requests 3 and 4 in both
    merged = feedback.merge(old, new)
    assert merged.request_id.tolist() == ids(8)
    assert np.array_equal(merged.data.x[:5], old.data.x)  # the known rows are kept as they were
    assert feedback.merge(merged, new).request_id.tolist() == ids(8)  # merging again adds nothing
    assert len(feedback.merge()) == 0


def test_the_held_out_side_depends_on_the_request_id_alone():
    c = made(2000)
    held = feedback.is_held_out(c.request_id, 0.2)
    assert 0.17 < held.mean() < 0.23
    assert np.array_equal(feedback.is_held_out(c.request_id[::-1], 0.2), held[::-1])  # not on position
    assert not feedback.is_held_out(c.request_id, 0.0).any()
    parts = feedback.split(c, 0.2)
    assert set(parts["train"].request_id) | set(parts["holdout"].request_id) == set(c.request_id)
    assert not set(parts["train"].request_id) & set(parts["holdout"].request_id)
    with pytest.raises(ValueError, match="held-out fraction"):
        feedback.is_held_out(c.request_id, 1.0)


def test_save_and_load_round_trip_byte_identically(tmp_path):
    c = made(20)
    feedback.save(c, tmp_path / "a")
    back = feedback.load(tmp_path / "a")
    for name in ("request_id", "time", "corrected_at"):
        assert np.array_equal(getattr(back, name), getattr(c, name))
    assert np.array_equal(back.data.x, c.data.x) and np.array_equal(back.data.y, c.data.y)
    assert len(load_dataset(tmp_path / "a")) == 20  # a dataset folder like any split
    feedback.save(feedback.merge(back), tmp_path / "b")
    for f in sorted((tmp_path / "a").iterdir()):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name


def test_no_folder_is_no_corrections_and_a_broken_one_is_named(tmp_path):
    assert len(feedback.load(tmp_path / "none")) == 0
    feedback.save(made(3), tmp_path / "c")
    (tmp_path / "c" / "time.npy").write_bytes(b"not an array")
    with pytest.raises(PipelineError, match=r"time\.npy cannot be read"):
        feedback.load(tmp_path / "c")


def test_the_cap_keeps_the_newest_corrections_in_their_order():
    c = made(10)
    c = feedback.Corrections(c.data, c.request_id, c.time, np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0], np.float64))
    assert feedback.newest(c, 3).request_id.tolist() == ids(3)
    assert len(feedback.newest(c, 0)) == 10 and len(feedback.newest(c, 50)) == 10
    assert len(feedback.training_rows("/nonexistent/feedback/train", 5)) == 0
