"""The config loader: defaults, the committed params.yaml, and errors that name the key."""

from pathlib import Path

import pytest
import yaml

from rotmnist.config import Config, config_from_dict, load_config
from rotmnist.errors import ConfigError
from rotmnist.spec import ALLOWED_ANGLES

REPO = Path(__file__).resolve().parents[2]


def test_committed_params_are_valid_and_complete():
    config = load_config(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    # every section is spelled out in params.yaml, so `dvc.yaml` can depend on it
    assert set(raw) == set(Config.model_fields)
    assert config.augment.strategy == "exhaustive"
    assert config.augment.angles == ALLOWED_ANGLES
    assert config.serve == Config().serve  # params.yaml states the serve defaults the README lists


def test_empty_mapping_gives_defaults():
    assert config_from_dict({}) == Config()


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        ({"augment": {"strategyy": "random"}}, "augment.strategyy", "unknown key"),
        ({"nonsense": {}}, "nonsense", "unknown key"),
        ({"augment": {"strategy": "spin"}}, "augment.strategy", "'exhaustive' or 'random'"),
        ({"augment": {"angles": [5]}}, "augment.angles", "subset of [-30, -20, -10, 10, 20, 30]"),
        ({"augment": {"angles": [10, 10]}}, "augment.angles", "must not repeat"),
        ({"train": {"epochs": "3"}}, "train.epochs", "valid integer"),
        ({"train": {"epochs": 0}}, "train.epochs", "greater than or equal to 1"),
        ({"split": {"val_fraction": 1.5}}, "split.val_fraction", "less than 1"),
        ({"split": {"val_fraction": 0.6, "holdout_fraction": 0.5}}, "split", "must be < 1"),
        ({"download": {"source": "url"}}, "download", "download.url.address"),
        ({"download": {"wheel": {"sha256": "abc"}}}, "download.wheel.sha256", "64 characters"),
        ({"tune": {"space": {"cnn": {"convs_per_block": [3]}}}}, "tune.space.cnn.convs_per_block", "any of [1, 2]"),
        ({"tune": {"space": {"cnn": {"batch_norm": [1]}}}}, "tune.space.cnn.batch_norm", "valid boolean"),
        ({"serve": {"port": 70000}}, "serve.port", "less than or equal to 65535"),
        ({"serve": {"poll_seconds": -1}}, "serve.poll_seconds", "greater than or equal to 0"),
        ({"serve": {"max_body_bytes": 10}}, "serve.max_body_bytes", "greater than or equal to 1024"),
        ({"serve": {"batch_size": 8}}, "serve.batch_size", "unknown key"),
        ({"train": {"feedback": True}}, "train", "feedback moved to the section finetune"),
        ({"train": {"feedback_weight": 4.0, "feedback_cap": 9}}, "train", "feedback_cap, feedback_weight moved"),
        ({"finetune": {"lr": 0}}, "finetune.lr", "greater than 0"),
        ({"finetune": {"epochs": 0}}, "finetune.epochs", "greater than or equal to 1"),
    ],
)
def test_errors_name_the_key(data, key, fragment):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    message = str(err.value)
    assert f"  {key}" in message
    assert fragment in message


def test_every_bad_key_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"train": {"epochs": -1, "batch_size": 0}})
    assert "train.epochs" in str(err.value) and "train.batch_size" in str(err.value)


def test_int_is_accepted_for_float():
    assert config_from_dict({"augment": {"oversample_rate": 3}}).augment.oversample_rate == 3.0


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("augment: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(top)


def test_config_is_immutable():
    config = Config()
    with pytest.raises(Exception, match="frozen"):
        config.train.epochs = 3


@pytest.mark.parametrize(
    ("tune_keys", "message"),
    [
        ({"families": []}, "families must name at least one of"),
        ({"families": ["cnn", "cnn"]}, "families must not repeat"),
        ({"families": ["svm"]}, "tune.families.0"),
        ({"space": {"cnn": {"blocks": [4]}}}, r"choices \[4\] are not allowed; use any of \[1, 2, 3\]"),
        ({"space": {"lr": [0.0, 0.1]}}, "lr must be"),
        ({"space": {"dropout": [0.2, 1.0]}}, "dropout must be"),
        ({"space": {"batch_size": []}}, "non-empty list of distinct choices"),
        ({"space": {"mlp": {"depth": [1]}}}, "tune.space.mlp.depth: unknown key"),
        ({"pruner": "hyperband"}, "tune.pruner"),
        ({"n_trials": 0}, "tune.n_trials"),
        ({"train_fraction": 0.0}, "tune.train_fraction"),
    ],
)
def test_bad_tune_params_are_named(tune_keys, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"tune": tune_keys})


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
        ({"latency": {"single_calls": 20}}, "compare.latency", "unknown key"),  # timing is one top-level section
    ],
)
def test_bad_compare_params_are_refused_with_the_key_named(compare, key, fragment):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"compare": compare})
    assert f"{key}: " in str(err.value)
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    ("section", "key", "fragment"),
    [
        ({"single_calls": 5}, "latency.single_calls", "greater than or equal to 10"),
        ({"num_threads": 0}, "latency.num_threads", "greater than or equal to 1"),
        ({"threads": 2}, "latency.threads", "unknown key"),
    ],
)
def test_bad_latency_params_are_refused_with_the_key_named(section, key, fragment):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"latency": section})
    assert f"{key}: " in str(err.value) and fragment in str(err.value)


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


@pytest.mark.parametrize(
    ("section", "key", "fragment"),
    [
        ({"orientations": [-30, 30]}, "model.orientations", "0 among them"),
        ({"orientations": [30, 0]}, "model.orientations", "in increasing order"),
        ({"orientations": [0, 0]}, "model.orientations", "distinct angles"),
        ({"orientations": [0, 200]}, "model.orientations", "-180..180"),
        ({"orientations": []}, "model.orientations", "at least 1 item"),
        ({"pool_below": 0.0}, "model.pool_below", "greater than 0"),
        ({"pool_below": 1.5}, "model.pool_below", "less than or equal to 1"),
    ],
)
def test_bad_model_params_are_refused_with_the_key_named(section, key, fragment):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"model": section})
    assert f"  {key}:" in str(err.value) and fragment in str(err.value)
