"""The comparison's pieces: the image budget, the SLA verdict, the Pareto front, timing, model loading, params."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rotmnist import io
from rotmnist.config import SlaConfig, config_from_dict
from rotmnist.errors import ConfigError, PipelineError
from rotmnist.learning import compare as comparison
from rotmnist.learning.model import classifier_from_spec, predict_proba
from rotmnist.spec import CONFIGURATIONS, split_configuration
from rotmnist.tracking.compare import row_metrics

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(("pool", "n"), [(10, 35), (10, 10), (100, 7), (1, 5)])
def test_every_configuration_sees_exactly_the_budget_and_each_row_about_equally_often(pool, n):
    rows = comparison.budget_rows(pool, n, seed=0)
    assert len(rows) == n
    counts = np.bincount(rows, minlength=pool)
    if n >= pool:  # cycled through: every row n // pool or one more times
        assert counts.max() - counts.min() <= 1
    else:  # sampled without repeats
        assert counts.max() == 1
    assert np.array_equal(rows, comparison.budget_rows(pool, n, seed=0))
    assert not np.array_equal(comparison.budget_rows(100, 50, seed=0), comparison.budget_rows(100, 50, seed=1))


def _dataset(angles: list[int]) -> io.Dataset:
    n = len(angles)
    return io.Dataset(
        x=np.zeros((n, 28, 28), np.uint8),
        y=np.arange(n, dtype=np.uint8) % 10,
        source_id=np.arange(n, dtype=np.int32),
        angle=np.array(angles, np.int8),
        mnist_split=np.zeros(n, np.int8),
    )


def test_the_upright_pool_holds_only_angle_zero_and_the_rotated_pool_everything():
    train = _dataset([0, 10, -30, 0, 30])
    assert comparison.training_pool(train, "upright").angle.tolist() == [0, 0]
    assert len(comparison.training_pool(train, "rotated")) == 5
    with pytest.raises(PipelineError, match="no upright images"):
        comparison.training_pool(_dataset([10, 20]), "upright")


def test_configuration_names_come_from_one_list():
    assert split_configuration("cnn-rotated") == ("cnn", "rotated")
    assert "pipeline" in CONFIGURATIONS and len(CONFIGURATIONS) == 7
    for bad in ("pipeline", "cnn", "svm-upright", "mlp-sideways"):
        with pytest.raises(ValueError, match="not a trained configuration"):
            split_configuration(bad)


SLA = SlaConfig(min_worst_angle_accuracy=0.99, max_p99_latency_ms=5.0)


def _row(accuracy: float, p99: float) -> dict:
    return {"worst_angle_accuracy": accuracy, "worst_angle": 30, "latency_ms_p99": p99}


def test_the_sla_is_met_within_both_thresholds_including_the_boundaries():
    assert comparison.sla_verdict(_row(0.995, 1.0), SLA) == {"sla_met": True, "sla_reasons": "none"}
    assert comparison.sla_verdict(_row(0.99, 5.0), SLA)["sla_met"]


def test_the_sla_verdict_says_which_threshold_failed():
    low = comparison.sla_verdict(_row(0.9812, 1.0), SLA)
    assert not low["sla_met"]
    assert low["sla_reasons"] == "worst-angle accuracy 98.12% at +30° < 99.00%"
    slow = comparison.sla_verdict(_row(0.999, 7.5), SLA)
    assert slow["sla_reasons"] == "single-image p99 7.50 ms > 5 ms"
    both = comparison.sla_verdict(_row(0.5, 50.0), SLA)
    assert not both["sla_met"] and both["sla_reasons"].count(";") == 1


def test_the_pareto_front_keeps_exactly_the_undominated_points():
    points = {
        "fast": (0.90, 0.1),
        "accurate": (0.99, 2.0),
        "middle": (0.95, 0.5),
        "dominated": (0.94, 0.6),  # middle is more accurate and faster
        "slower_twin": (0.99, 3.0),  # as accurate as `accurate`, slower
        "tie": (0.90, 0.1),  # equal to `fast`: neither beats the other
    }
    assert comparison.pareto_front(points) == {"fast", "accurate", "middle", "tie"}
    rows = comparison.mark_pareto({n: {"worst_angle_accuracy": a, "latency_ms_p99": t} for n, (a, t) in points.items()})
    assert [n for n, r in rows.items() if r["pareto"]] == ["fast", "accurate", "middle", "tie"]


def test_latency_is_measured_with_the_configured_threads_which_are_restored_after():
    cfg = config_from_dict({"compare": {"latency": {"warmup": 2, "single_calls": 20, "batch_calls": 3}}}).compare
    model = classifier_from_spec({"family": "logreg"}).eval()
    before = torch.get_num_threads()
    seen = []
    original = comparison.predict_proba

    def spy(m, x):
        seen.append(torch.get_num_threads())
        return original(m, x)

    comparison.predict_proba = spy
    try:
        lat = comparison.measure_latency(model, np.zeros((5, 28, 28), np.uint8), cfg.latency)
    finally:
        comparison.predict_proba = original
    assert set(seen) == {cfg.latency.num_threads}
    assert len(seen) == 2 + 20 + 1 + 3
    assert torch.get_num_threads() == before
    assert 0 < lat["latency_ms_p50"] <= lat["latency_ms_p99"]
    assert lat["batch_images_per_second"] > 0


def test_model_size_counts_parameters_and_the_saved_bytes():
    size = comparison.model_size(classifier_from_spec({"family": "logreg"}))
    assert size["parameters"] == 28 * 28 * 10 + 10
    assert size["model_bytes"] > 4 * size["parameters"]


def test_the_pipeline_model_loads_from_its_state_dict_and_spec(tmp_path):
    spec = {"family": "mlp", "layers": 1, "width": 16}
    torch.manual_seed(0)
    model = classifier_from_spec(spec, 30.0, 70.0).eval()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    io.write_json(tmp_path / "run.json", {"run_id": "r", "spec": spec})
    loaded, reference = comparison.load_pipeline_model(tmp_path / "model.pt", tmp_path / "run.json")
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28)).astype(np.uint8)
    assert np.allclose(predict_proba(loaded, x), predict_proba(model, x))
    assert reference["spec"] == spec


def test_a_missing_or_mismatched_pipeline_model_says_to_run_train(tmp_path):
    io.write_json(tmp_path / "run.json", {"run_id": "r", "spec": {"family": "mlp", "layers": 1, "width": 16}})
    with pytest.raises(PipelineError, match="run `rotmnist train` first"):
        comparison.load_pipeline_model(tmp_path / "model.pt", tmp_path / "run.json")
    torch.save(classifier_from_spec({"family": "logreg"}).state_dict(), tmp_path / "model.pt")
    with pytest.raises(PipelineError, match="does not load as the model"):
        comparison.load_pipeline_model(tmp_path / "model.pt", tmp_path / "run.json")
    io.write_json(tmp_path / "run.json", {"run_id": "r"})
    with pytest.raises(PipelineError, match="lacks the model spec"):
        comparison.load_pipeline_model(tmp_path / "model.pt", tmp_path / "run.json")


def test_a_row_becomes_mlflow_metrics_with_the_text_left_to_tags():
    row = {"model": "logreg", "accuracy": 0.9, "worst_angle": -30, "sla_met": False, "sla_reasons": "x"}
    row |= {"angle_accuracy": {"-30": 0.8, "0": 0.95}, "trained_by": "compare", "training_data": "upright"}
    assert row_metrics(row) == {
        "accuracy_angle_-30": 0.8,
        "accuracy_angle_0": 0.95,
        "accuracy": 0.9,
        "worst_angle": -30.0,
        "sla_met": 0.0,
    }


def test_the_default_specs_are_complete_model_specs():
    specs = config_from_dict({}).compare.specs
    assert specs.cnn["family"] == "cnn" and specs.cnn["convs_per_block"] == 1
    assert specs.logreg == {"family": "logreg"}


@pytest.mark.parametrize(
    ("compare", "key", "fragment"),
    [
        ({"configurations": ["cnn-sideways"]}, "compare.configurations.0", "'pipeline'"),
        ({"configurations": ["pipeline", "pipeline"]}, "compare.configurations", "must not repeat"),
        ({"configurations": []}, "compare.configurations", "at least one"),
        ({"train_images": 0}, "compare.train_images", "greater than or equal to 1"),
        ({"specs": {"cnn": {"kernel": 4}}}, "compare.specs.cnn", "cnn.kernel must be 3 or 5"),
        ({"specs": {"mlp": {"depth": 2}}}, "compare.specs.mlp", "unknown key(s) ['depth']"),
        ({"specs": {"svm": {}}}, "compare.specs.svm", "unknown key"),
        ({"sla": {"min_worst_angle_accuracy": 1.5}}, "compare.sla.min_worst_angle_accuracy", "less than or equal"),
        ({"sla": {"max_p99_latency_ms": 0}}, "compare.sla.max_p99_latency_ms", "greater than 0"),
        ({"latency": {"single_calls": 5}}, "compare.latency.single_calls", "greater than or equal to 10"),
        ({"latency": {"threads": 2}}, "compare.latency.threads", "unknown key"),
    ],
)
def test_bad_compare_params_are_refused_with_the_key_named(compare, key, fragment):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"compare": compare})
    assert f"{key}: " in str(err.value)
    assert fragment in str(err.value)


def test_the_compare_plot_in_dvc_yaml_draws_one_line_per_possible_configuration():
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    (angle_plot,) = [p["plots/compare/angle_accuracy.csv"] for p in plots if "plots/compare/angle_accuracy.csv" in p]
    assert sorted(angle_plot["y"]) == sorted(CONFIGURATIONS)
