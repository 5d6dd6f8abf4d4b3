"""Device and precision resolution."""

from __future__ import annotations

import pytest
import torch

from rotmnist.errors import PipelineError
from rotmnist.learning import device, recipe
from rotmnist.learning.recipe import Hyper


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_is_bf16_only_where_the_cpu_runs_it_natively(monkeypatch, native, expected):
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert device.resolve_precision("auto", cpu) == expected
    assert recipe.hyper_dict(Hyper(precision="auto"), cpu)["precision"] == expected  # what MLflow records
    assert device.resolve_precision("fp32", cpu) == "fp32" and device.resolve_precision("bf16", cpu) == "bf16"


def test_resolve_precision_refuses_unknown_names():
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match=r"precision must be one of \['auto', 'fp32', 'bf16'\]"):
        device.resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="precision one of"):
        Hyper(precision="fp16")


def test_resolve_device():
    assert device.resolve_device("cpu").type == "cpu"
    assert device.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(PipelineError, match=r"train.device must be one of \['auto', 'cpu', 'cuda'\]"):
        device.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(PipelineError, match="no CUDA device"):
            device.resolve_device("cuda")
