"""The training recipe: the settings' checks, tuned parameters joined with the shared recipe, best_params.json."""

from __future__ import annotations

import json

import pytest

from rotmnist.config import config_from_dict
from rotmnist.errors import PipelineError
from rotmnist.learning import recipe
from rotmnist.learning.recipe import Hyper


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


def test_read_best_params(tmp_path):
    path = tmp_path / "best_params.json"
    with pytest.raises(PipelineError, match="run `rotmnist tune` first"):
        recipe.read_best_params(path)
    path.write_text("{not json")
    with pytest.raises(PipelineError, match="not valid JSON"):
        recipe.read_best_params(path)
    path.write_text(json.dumps({"spec": {"family": "cnn"}}))
    with pytest.raises(PipelineError, match="objects 'spec' and 'hyper'"):
        recipe.read_best_params(path)
    path.write_text(json.dumps({"spec": {"family": "cnn", "kernel": 7}, "hyper": {}}))
    with pytest.raises(PipelineError, match=r"cnn\.kernel must be 3 or 5"):
        recipe.read_best_params(path)
    path.write_text(json.dumps({"spec": {"family": "mlp"}, "hyper": {"lr": 0.01, "weight_decay": 0.0}}))
    with pytest.raises(PipelineError, match="batch_size"):
        recipe.read_best_params(path)
    doc = {"spec": {"family": "mlp"}, "hyper": {"lr": 0.01, "weight_decay": 0.0, "batch_size": 64}, "trial": 3}
    path.write_text(json.dumps(doc))
    spec, hyper, whole = recipe.read_best_params(path)
    assert spec["family"] == "mlp" and spec["width"] == 256 and hyper == doc["hyper"] and whole["trial"] == 3


def test_recipe_joins_tuned_params_and_the_shared_training_recipe():
    config = config_from_dict({"train": {"shift": 1, "label_smoothing": 0.1, "schedule": "cosine"}})
    hp = recipe.recipe(config, {"lr": 0.01, "weight_decay": 0.0, "batch_size": 64}, epochs=4)
    assert (hp.lr, hp.batch_size, hp.epochs, hp.shift, hp.label_smoothing, hp.schedule) == (
        0.01,
        64,
        4,
        1,
        0.1,
        "cosine",
    )
