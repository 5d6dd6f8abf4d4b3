"""The finetune stage: its recipe, its report, and the candidate it writes when there is nothing to fine-tune."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from rotmnist import io
from rotmnist.config import config_from_dict
from rotmnist.data import feedback
from rotmnist.errors import PipelineError
from rotmnist.learning.model import classifier_from_spec
from rotmnist.paths import Paths
from rotmnist.reports import metrics_problems
from rotmnist.stages import finetune


def test_the_fine_tune_keeps_the_sweeps_choice_and_trains_on_its_own_schedule():
    config = config_from_dict(
        {
            "train": {"shift": 1, "label_smoothing": 0.1, "precision": "fp32", "rotations_per_epoch": 2, "ema": 0.99},
            "finetune": {"lr": 1e-4, "epochs": 3, "feedback_weight": 2.0, "replay_rotations": 0},
        }
    )
    hp = finetune.finetune_hyper(config, {"lr": 5e-3, "weight_decay": 1e-3, "batch_size": 128, "dropout": 0.2})
    assert (hp.lr, hp.epochs, hp.feedback_weight, hp.schedule, hp.rotations_per_epoch) == (1e-4, 3, 2.0, "cosine", 0)
    assert (hp.weight_decay, hp.batch_size) == (1e-3, 128)  # the tuned run's, not re-tuned
    assert (hp.shift, hp.label_smoothing, hp.precision, hp.ema) == (1, 0.1, "fp32", 0.99)  # train's recipe


def test_the_change_is_in_points_per_angle_and_the_largest_drop_is_never_negative():
    base = {"accuracy": 0.99, "per_angle": {"-30": 0.99, "0": 0.995, "30": 0.98}}
    tuned = {"accuracy": 0.99, "per_angle": {"-30": 0.985, "0": 0.996, "30": 0.98}}
    change = finetune.test_change(base, tuned)
    assert change["per_angle"] == pytest.approx({"-30": -0.5, "0": 0.1, "30": 0.0})
    assert (change["largest_drop"], change["largest_drop_angle"]) == (pytest.approx(0.5), -30)
    better = finetune.test_change(base, {"accuracy": 1.0, "per_angle": dict.fromkeys(base["per_angle"], 1.0)})
    assert better["largest_drop"] == 0.0


@pytest.fixture
def trained(tmp_path):
    """A workspace where `train` has written its model and reference (no MLflow needed to pass them through)."""
    paths = Paths(root=tmp_path, store_root=tmp_path)
    paths.models.mkdir()
    paths.model_file.write_bytes(b"the weights train wrote")
    reference = {"run_id": "r1", "model_uri": "models:/m-1", "experiment_id": "1", "spec": {"family": "logreg"}}
    io.write_json(paths.run_reference, reference | {"tracking_uri": "sqlite:///x.db"})
    return paths


@pytest.mark.parametrize("switch", [False, True])
def test_without_corrections_the_candidate_is_trains_model_byte_for_byte(trained, switch, caplog):
    paths = trained
    if switch:  # switched on, but the export holds no corrections yet
        feedback.save(feedback.empty(), paths.feedback / "train")
    caplog.set_level(logging.INFO, logger=finetune.log.name)
    finetune.main(config_from_dict({"finetune": {"feedback": switch}}), paths)
    assert paths.candidate_file.read_bytes() == paths.model_file.read_bytes()
    reference = json.loads(paths.run_reference.read_text())
    candidate = json.loads(paths.candidate_reference.read_text())
    assert candidate == reference | {"finetuned": False, "base_run_id": "r1"}
    why = "holds no corrections" if switch else "finetune.feedback is false"
    assert f"{why}: the candidate is train's model (run r1)" in caplog.text
    report = json.loads(paths.report("finetune").read_text())
    headline = json.loads(paths.headline("finetune").read_text())
    assert report["finetuned"] is False and report["feedback_images"] == 0
    assert set(headline) == {"finetuned", "seconds"} and metrics_problems(headline) == []


def test_a_missing_train_reference_says_to_run_train(tmp_path):
    paths = Paths(root=tmp_path, store_root=tmp_path)
    with pytest.raises(PipelineError, match="run `rotmnist train`"):
        finetune.main(config_from_dict({}), paths)


def test_the_blend_moves_every_float_tensor_toward_trains_model_and_leaves_the_fine_tuned_one_alone():
    torch.manual_seed(0)
    spec = {"family": "cnn", "blocks": 1, "channels": 4, "kernel": 3, "dense": 8, "batch_norm": True}
    base, tuned = classifier_from_spec(spec, 30.0, 70.0).eval(), classifier_from_spec(spec, 40.0, 80.0).eval()
    assert finetune.blended(base, tuned, 1.0) is tuned
    before = {k: v.clone() for k, v in tuned.state_dict().items()}
    mixed = finetune.blended(base, tuned, 0.8).state_dict()
    for key, value in before.items():
        if value.is_floating_point():
            assert torch.allclose(mixed[key], 0.8 * value + 0.2 * base.state_dict()[key], atol=1e-6), key
        else:  # batch-norm's step counter stays the fine-tuned model's
            assert torch.equal(mixed[key], value), key
    assert all(torch.equal(v, before[k]) for k, v in tuned.state_dict().items())


def test_a_sweep_choice_that_is_not_trains_model_is_refused_before_training(trained):
    paths = trained
    torch.save(classifier_from_spec({"family": "logreg"}).state_dict(), paths.model_file)
    hyper = {"lr": 0.003, "weight_decay": 1e-4, "batch_size": 64}
    io.write_json(paths.best_params, {"spec": {"family": "mlp", "layers": 1, "width": 16}, "hyper": hyper})
    one = feedback.corrections(np.zeros((1, 28, 28), np.uint8), np.array([7]), ["a" * 32], np.zeros(1), np.ones(1))
    feedback.save(one, paths.feedback / "train")
    with pytest.raises(PipelineError, match=r"best_params.json \(mlp-.*\) is not train's model \(logreg\)"):
        finetune.main(config_from_dict({"finetune": {"feedback": True}}), paths)
    assert not paths.candidate_file.exists() and not paths.candidate_reference.exists()
