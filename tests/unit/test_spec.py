"""The model specs and the names of the compared configurations."""

from __future__ import annotations

import pytest

from rotmnist.spec import CONFIGURATIONS, FAMILIES, normalize_spec, split_configuration


def test_configuration_names_come_from_one_list():
    assert split_configuration("cnn-rotated") == ("cnn", "rotated")
    assert "pipeline" in CONFIGURATIONS and len(CONFIGURATIONS) == 7
    for bad in ("pipeline", "cnn", "svm-upright", "mlp-sideways"):
        with pytest.raises(ValueError, match="not a trained configuration"):
            split_configuration(bad)


def test_normalize_spec_fills_defaults_and_keeps_given_values():
    spec = normalize_spec({"family": "cnn", "blocks": 3})
    assert spec["blocks"] == 3 and spec["kernel"] == 3 and spec["batch_norm"] is True
    assert normalize_spec({"family": "logreg"}) == {"family": "logreg"}
    assert set(FAMILIES) == {"cnn", "mlp", "logreg"}
