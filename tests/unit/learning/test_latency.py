"""The latency timer shared by train, the sweep and compare."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rotmnist.config import LatencyConfig
from rotmnist.learning import latency
from rotmnist.learning.model import classifier_from_spec

FEW_CALLS = LatencyConfig(warmup=2, single_calls=20, batch_size=8, batch_calls=3)


def test_latency_is_measured_with_the_configured_threads_which_are_restored_after(monkeypatch):
    model = classifier_from_spec({"family": "logreg"}).eval()
    before = torch.get_num_threads()
    seen = []
    original = latency.predict_proba

    def spy(m, x):
        seen.append((torch.get_num_threads(), len(x)))
        return original(m, x)

    monkeypatch.setattr(latency, "predict_proba", spy)
    lat = latency.measure_latency(model, np.zeros((5, 28, 28), np.uint8), FEW_CALLS)
    assert {threads for threads, _ in seen} == {FEW_CALLS.num_threads}
    # warm-up and timed single images, then one untimed and the timed batches
    assert [n for _, n in seen] == [1] * (2 + 20) + [8] * (1 + 3)
    assert torch.get_num_threads() == before
    assert set(lat) == {"latency_ms_p50", "latency_ms_p99", "batch_images_per_second"}
    assert 0 < lat["latency_ms_p50"] <= lat["latency_ms_p99"]
    assert lat["batch_images_per_second"] > 0


def test_latency_needs_images():
    model = classifier_from_spec({"family": "logreg"}).eval()
    with pytest.raises(ValueError, match="need images"):
        latency.measure_latency(model, np.zeros((0, 28, 28), np.uint8), FEW_CALLS)
