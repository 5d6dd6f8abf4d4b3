"""The compare stage's outputs as dvc.yaml plots them."""

from __future__ import annotations

from pathlib import Path

import yaml

from rotmnist.spec import CONFIGURATIONS

REPO = Path(__file__).resolve().parents[3]


def test_the_compare_plot_in_dvc_yaml_draws_one_line_per_possible_configuration():
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    (angle_plot,) = [p["plots/compare/angle_accuracy.csv"] for p in plots if "plots/compare/angle_accuracy.csv" in p]
    assert sorted(angle_plot["y"]) == sorted(CONFIGURATIONS)
