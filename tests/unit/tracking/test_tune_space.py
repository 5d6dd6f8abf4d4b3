"""The sweep's search space: what a trial samples, and the names of its runs."""

from __future__ import annotations

import optuna
import pytest

from rotmnist.config import config_from_dict
from rotmnist.spec import normalize_spec
from rotmnist.tracking import tune_space


@pytest.mark.parametrize(
    ("params", "spec_keys"),
    [
        (
            {"family": "cnn", "blocks": 3, "channels": 16, "kernel": 5, "convs_per_block": 1, "batch_norm": True}
            | {"dense": 64, "dropout": 0.1},
            {"family", "blocks", "channels", "kernel", "convs_per_block", "batch_norm", "dense", "dropout"},
        ),
        ({"family": "mlp", "layers": 2, "width": 512, "dropout": 0.2}, {"family", "layers", "width", "dropout"}),
        ({"family": "logreg"}, {"family"}),
    ],
)
def test_suggest_samples_only_the_familys_params(params, spec_keys):
    config = config_from_dict({"tune": {"families": ["cnn", "mlp", "logreg"]}})
    hyper = {"lr": 0.002, "weight_decay": 1e-4, "batch_size": 128}
    spec, sampled = tune_space.suggest(optuna.trial.FixedTrial(params | hyper), config.tune)
    assert set(spec) == spec_keys and spec == params and sampled == hyper
    normalize_spec(spec)  # a valid model spec
    assert tune_space.params_to_choice(params | hyper) == (spec, hyper)


def test_suggest_stays_inside_the_configured_space():
    config = config_from_dict(
        {"tune": {"space": {"lr": [0.001, 0.002], "batch_size": [64], "cnn": {"blocks": [3], "kernel": [5]}}}}
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        spec, hyper = tune_space.suggest(trial, config.tune)
        assert spec["blocks"] == 3 and spec["kernel"] == 5 and spec["channels"] == 16
        assert spec["convs_per_block"] == 1 and spec["batch_norm"] is True
        assert 0.001 <= hyper["lr"] <= 0.002 and hyper["batch_size"] == 64
        study.tell(trial, 0.5)


def test_run_names_say_the_family_and_key_params():
    spec = {"family": "cnn", "blocks": 2, "channels": 16, "kernel": 3, "dense": 128}
    assert tune_space.run_name(3, spec, {"lr": 0.003, "batch_size": 256}) == "t003-cnn-b2-c16-k3-d128-lr3e-03-bs256"
    assert tune_space.run_name(None, {"family": "mlp"}, {"lr": 0.01, "batch_size": 64}) == "mlp-2x256-lr1e-02-bs64"
