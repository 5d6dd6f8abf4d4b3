"""`rotmnist predict`: the champion's digit and probability per image, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rotmnist import cli
from rotmnist.commands import predict
from rotmnist.config import Config
from rotmnist.paths import Paths
from rotmnist.tracking import registry, store
from tests.support.fakes import ProbModel


def digit_one(size: int = 28, ink: int = 255, paper: int = 0) -> np.ndarray:
    """A vertical bar ("1") left of centre on a square canvas."""
    img = np.full((size, size), paper, np.uint8)
    img[size // 4 : 3 * size // 4, size // 3 : size // 3 + max(1, size // 14)] = ink
    return img


@pytest.fixture
def no_tracking(monkeypatch):
    monkeypatch.setattr(store, "configure_mlflow", lambda config, paths: "0")


def test_predict_prints_digit_and_probability(tmp_path, monkeypatch, capsys, no_tracking):
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.uint8))
    Image.fromarray(digit_one()).save(tmp_path / "one.png")
    seen = {}

    def fake_champion(name, client=None):
        seen["name"] = name
        return registry.Classifier(ProbModel(label=1), f"models:/{name}@champion", "2")

    monkeypatch.setattr(registry, "load_champion", fake_champion)
    paths = Paths(root=tmp_path, store_root=tmp_path)
    predict.main(Config(), paths, [str(tmp_path / "x.npy"), str(tmp_path / "one.png")], None)
    assert seen["name"] == Config().monitor.model_name
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{tmp_path / 'x.npy'}[0]\t1\t1.0000",
        f"{tmp_path / 'x.npy'}[1]\t1\t1.0000",
        f"{tmp_path / 'one.png'}\t1\t1.0000",
    ]


def test_predict_errors_are_one_line_with_exit_status_1(tmp_path, monkeypatch, capsys, no_tracking):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["predict", "nope.png"]) == 1
    assert capsys.readouterr().err.strip() == "rotmnist predict: nope.png does not exist"
    np.save(tmp_path / "x.npy", np.zeros((1, 28, 28)))
    assert cli.main(["predict", "x.npy", "--model", str(tmp_path / "model.pkl")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rotmnist predict: model URI") and "is not allowed" in err and len(err.splitlines()) == 1
