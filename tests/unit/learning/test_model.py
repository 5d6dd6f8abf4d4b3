"""The model factory, the raw-image classifier and batched inference."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from rotmnist import io
from rotmnist.errors import PipelineError
from rotmnist.learning.circle import turned
from rotmnist.learning.model import (
    Pooling,
    RawImageClassifier,
    build_model,
    classifier_from_spec,
    load_pipeline_model,
    predict_labels,
    predict_proba,
)
from rotmnist.spec import describe

SPECS = [
    {"family": "cnn"},
    {"family": "cnn", "blocks": 1, "channels": 8, "kernel": 5, "dense": 0, "dropout": 0.0},
    {"family": "cnn", "blocks": 3, "channels": 4, "convs_per_block": 2, "batch_norm": False, "dense": 16},
    {"family": "mlp", "layers": 1, "width": 32},
    {"family": "mlp", "layers": 4, "width": 16, "dropout": 0.0},
    {"family": "logreg"},
]


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("spec", SPECS, ids=describe)
def test_every_family_maps_normalised_images_to_ten_logits(spec):
    net = build_model(spec).eval()
    out = net(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10) and out.dtype == torch.float32


def test_families_differ_in_size_as_their_specs_say():
    n_params = {describe(s): sum(p.numel() for p in build_model(s).parameters()) for s in SPECS}
    assert n_params["logreg"] == 28 * 28 * 10 + 10
    assert n_params["mlp-1x32"] == 28 * 28 * 32 + 32 + 32 * 10 + 10
    # 1 block of 8 channels, kernel 5, with batch norm (no conv bias), no dense layer: 14 x 14 x 8 features.
    assert n_params["cnn-b1-c8-k5-d0"] == 8 * 25 + 2 * 8 + 14 * 14 * 8 * 10 + 10
    assert describe(SPECS[2]) == "cnn-b3-c4-k3-d16-x2-nobn"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"family": "svm"}, r"unknown family 'svm'; expected one of \['cnn', 'mlp', 'logreg'\]"),
        ({}, "unknown family None"),
        ({"family": "mlp", "kernel": 3}, r"unknown key\(s\) \['kernel'\] for family 'mlp'"),
        ({"family": "cnn", "kernel": 4}, "cnn.kernel must be 3 or 5, got 4"),
        ({"family": "cnn", "blocks": 4}, "cnn.blocks must be 1, 2 or 3"),
        ({"family": "cnn", "dropout": 1.0}, r"cnn.dropout must be a number in \[0, 1\)"),
        ({"family": "mlp", "width": 0}, "mlp.width must be an integer >= 1"),
        ({"family": "cnn", "batch_norm": 1}, "cnn.batch_norm must be true or false"),
    ],
)
def test_bad_specs_name_the_key_and_the_allowed_values(spec, message):
    with pytest.raises(ValueError, match=message):
        build_model(spec)


def test_a_spec_must_be_a_mapping():
    with pytest.raises(TypeError, match="mapping"):
        build_model(["cnn"])


def test_raw_image_classifier_returns_probabilities_of_raw_pixels():
    torch.manual_seed(0)
    clf = classifier_from_spec({"family": "cnn", "channels": 4, "dense": 8}).eval()
    x = images(6)
    probs = clf(torch.from_numpy(x).float())
    assert probs.shape == (6, 10) and probs.dtype == torch.float32
    np.testing.assert_allclose(probs.sum(1).detach().numpy(), 1.0, rtol=1e-5)
    # The constants live in the module: a different mean changes what it predicts.
    shifted = RawImageClassifier(clf.net, mean=100.0, std=clf.std.item()).eval()
    assert not torch.allclose(shifted(torch.from_numpy(x).float()), probs)


def test_normalisation_constants_travel_in_the_state_dict(tmp_path):
    clf = classifier_from_spec({"family": "mlp", "layers": 1, "width": 8}, mean=12.5, std=50.0)
    torch.save(clf.state_dict(), tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert float(state["mean"]) == 12.5 and float(state["std"]) == 50.0
    fresh = classifier_from_spec({"family": "mlp", "layers": 1, "width": 8})
    fresh.load_state_dict(state)
    x = images(4)
    assert np.array_equal(predict_labels(fresh, x), predict_labels(clf, x))
    assert float(fresh.mean) == 12.5


def test_std_must_be_positive():
    with pytest.raises(ValueError, match="std must be > 0"):
        RawImageClassifier(build_model({"family": "logreg"}), mean=0.0, std=0.0)


def test_batched_inference_matches_one_pass_for_uint8_and_float_input():
    torch.manual_seed(1)
    clf = classifier_from_spec({"family": "cnn", "channels": 4, "dense": 8, "dropout": 0.5})
    clf.train()
    x = images(7)
    full = predict_proba(clf, x, batch_size=1000)
    assert np.allclose(predict_proba(clf, x, batch_size=3), full, atol=1e-6)
    assert np.array_equal(predict_labels(clf, x.astype(np.float32), batch_size=2), full.argmax(1))
    assert np.array_equal(clf.predict(x), full.argmax(1))
    assert clf.training, "predict_* restores the module's mode"
    assert predict_labels(clf, x[:0]).shape == (0,) and predict_proba(clf, x[:0]).shape == (0, 10)


@pytest.mark.parametrize("bad", [np.zeros((3, 28)), np.zeros((3, 28, 27)), [[0] * 28] * 28])
def test_inference_rejects_wrong_shapes(bad):
    clf = classifier_from_spec({"family": "logreg"})
    with pytest.raises(ValueError, match=r"shape \(N, 28, 28\)"):
        predict_labels(clf, bad)


def test_inference_rejects_a_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        predict_labels(classifier_from_spec({"family": "logreg"}), images(2), batch_size=0)


def test_the_pipeline_model_loads_from_its_state_dict_and_spec(tmp_path):
    spec = {"family": "mlp", "layers": 1, "width": 16}
    torch.manual_seed(0)
    original = classifier_from_spec(spec, 30.0, 70.0).eval()
    torch.save(original.state_dict(), tmp_path / "model.pt")
    io.write_json(tmp_path / "run.json", {"run_id": "r", "spec": spec})
    loaded, reference = load_pipeline_model(tmp_path / "model.pt", tmp_path / "run.json")
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28)).astype(np.uint8)
    assert np.allclose(predict_proba(loaded, x), predict_proba(original, x))
    assert reference["spec"] == spec


def test_a_missing_or_mismatched_pipeline_model_says_to_run_train(tmp_path):
    io.write_json(tmp_path / "run.json", {"run_id": "r", "spec": {"family": "mlp", "layers": 1, "width": 16}})
    with pytest.raises(PipelineError, match="run `rotmnist train` first"):
        load_pipeline_model(tmp_path / "model.pt", tmp_path / "run.json")
    torch.save(classifier_from_spec({"family": "logreg"}).state_dict(), tmp_path / "model.pt")
    with pytest.raises(PipelineError, match="does not load as the model"):
        load_pipeline_model(tmp_path / "model.pt", tmp_path / "run.json")
    io.write_json(tmp_path / "run.json", {"run_id": "r"})
    with pytest.raises(PipelineError, match="lacks the model spec"):
        load_pipeline_model(tmp_path / "model.pt", tmp_path / "run.json")


TURNS = (-90, -30, 0, 30, 90)


def _turned_mean(clf: RawImageClassifier, x: np.ndarray, angles) -> np.ndarray:
    """The pooled probabilities written out: the plain model on each turned copy, averaged."""
    plain = copy.deepcopy(clf).pool(Pooling())
    return np.mean([predict_proba(plain, turned(x, a)) for a in angles], axis=0)


def test_pooling_scores_every_digit_turned_by_each_orientation_and_averages():
    torch.manual_seed(0)
    clf = classifier_from_spec({"family": "cnn", "blocks": 1, "channels": 4, "dense": 0}).eval()
    x = images(6)
    clf.pool(Pooling(TURNS, below=1.0))
    probs = predict_proba(clf, x)
    np.testing.assert_allclose(probs, _turned_mean(clf, x, TURNS), atol=1e-5)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def test_pooling_turns_only_the_digits_the_model_is_unsure_of():
    torch.manual_seed(0)
    clf = classifier_from_spec({"family": "mlp", "layers": 1, "width": 16}).eval()
    x = images(40)
    plain = predict_proba(clf, x)
    below = float(np.median(plain.max(1)))  # half the digits are unsure
    probs = predict_proba(clf.pool(Pooling(TURNS, below=below)), x)
    unsure = plain.max(1) < below
    assert 0 < unsure.sum() < len(x)
    assert np.array_equal(probs[~unsure], plain[~unsure])
    np.testing.assert_allclose(probs[unsure], _turned_mean(clf, x[unsure], TURNS), atol=1e-5)
    all_sure = x[~unsure][:3]
    np.testing.assert_allclose(predict_proba(clf, all_sure), plain[~unsure][:3], atol=1e-6)  # none turned


def test_pooling_leaves_the_state_dict_and_training_logits_alone(tmp_path):
    torch.manual_seed(0)
    clf = classifier_from_spec({"family": "logreg"})
    before = clf.state_dict()
    clf.pool(Pooling(TURNS, 0.5))
    assert clf.state_dict().keys() == before.keys()
    plain = classifier_from_spec({"family": "logreg"})
    plain.load_state_dict(before)
    x = torch.from_numpy(images(3)).float()
    assert torch.equal(clf.logits(x), plain.logits(x))
    assert not torch.equal(clf(x), plain(x))


@pytest.mark.parametrize(
    ("orientations", "below", "message"),
    [((30, 60), 1.0, "must hold 0"), ((0, 30, 30), 1.0, "no angle twice"), ((0,), 0.0, r"below must be in \(0, 1\]")],
)
def test_a_bad_pooling_is_refused(orientations, below, message):
    with pytest.raises(ValueError, match=message):
        Pooling(orientations, below)


def test_the_pipeline_model_scores_with_the_pooling_its_reference_records(tmp_path):
    spec = {"family": "mlp", "layers": 1, "width": 16}
    torch.manual_seed(0)
    torch.save(classifier_from_spec(spec).state_dict(), tmp_path / "model.pt")
    pooling = Pooling(TURNS, 0.9)
    io.write_json(tmp_path / "run.json", {"run_id": "r", "spec": spec, "pooling": pooling.record()})
    loaded, _ = load_pipeline_model(tmp_path / "model.pt", tmp_path / "run.json")
    assert loaded.pooling == pooling and Pooling.of({}) == Pooling()
    io.write_json(tmp_path / "run.json", {"run_id": "r", "spec": spec, "pooling": {"orientations": [30]}})
    with pytest.raises(PipelineError, match=r"records a bad pooling .*must hold 0"):
        load_pipeline_model(tmp_path / "model.pt", tmp_path / "run.json")
