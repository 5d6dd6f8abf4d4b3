"""Registry loading logic (champion fallback) with a fake client, and the image readers of `rotmnist predict`."""

import logging
import types

import numpy as np
import pytest
from PIL import Image

from rotmnist import cli
from rotmnist.config import Config
from rotmnist.data import images
from rotmnist.errors import PipelineError
from rotmnist.paths import Paths
from rotmnist.serving import predict
from rotmnist.tracking import registry, store

# ---- images -------------------------------------------------------------------------------------------


def digit_one(size: int = 28, ink: int = 255, paper: int = 0) -> np.ndarray:
    """A vertical bar ("1") left of centre on a square canvas."""
    img = np.full((size, size), paper, np.uint8)
    img[size // 4 : 3 * size // 4, size // 3 : size // 3 + max(1, size // 14)] = ink
    return img


def centre_of_mass(img: np.ndarray) -> tuple[float, float]:
    w = img.astype(float)
    return (w.sum(1) @ np.arange(28)) / w.sum(), (w.sum(0) @ np.arange(28)) / w.sum()


def test_a_28x28_image_is_prepared_like_any_other_size():
    out = images.to_mnist_image(digit_one())  # a 14-px bar left of centre
    rows, _ = np.nonzero(out > 50)
    assert rows.max() - rows.min() + 1 in (19, 20, 21)
    cy, cx = centre_of_mass(out)
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1


def test_a_prepared_digit_prepared_again_moves_at_most_one_pixel():
    from tests.support.helpers import digit_templates

    for template in digit_templates():
        digit = images.to_mnist_image(template * 255)
        again = images.to_mnist_image(digit) > 127
        ink = digit > 127
        overlaps = [
            (np.roll(again, (dy, dx), (0, 1)) & ink).sum() / (np.roll(again, (dy, dx), (0, 1)) | ink).sum()
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        ]
        assert max(overlaps) > 0.95


def test_dark_on_light_is_inverted():
    out = images.to_mnist_image(digit_one(ink=0, paper=255))
    assert np.array_equal(out, images.to_mnist_image(digit_one()))


def test_a_large_image_is_cropped_scaled_to_20px_and_centred():
    out = images.to_mnist_image(digit_one(size=280, ink=20, paper=250))  # dark ink on light paper
    assert out.shape == (28, 28) and out.dtype == np.uint8
    rows, _ = np.nonzero(out > 50)
    assert rows.max() - rows.min() + 1 in (19, 20, 21)  # the tall side fits 20 px
    cy, cx = centre_of_mass(out)
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1
    assert images.to_mnist_image(np.zeros((50, 40))).sum() == 0
    with pytest.raises(ValueError, match="2-D grayscale"):
        images.to_mnist_image(np.zeros((3, 28, 28)))


def test_read_png_any_mode(tmp_path):
    gray = digit_one(size=56, ink=0, paper=255)
    Image.fromarray(gray).convert("RGB").save(tmp_path / "rgb.png")
    rgba = np.zeros((56, 56, 4), np.uint8)  # black ink on a transparent canvas: alpha is the ink
    rgba[..., 3] = 255 - gray
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    a = images.read_image(tmp_path / "rgb.png")
    b = images.read_image(tmp_path / "rgba.png")
    assert a.shape == b.shape == (28, 28)
    assert a.max() == 255 and a.mean() < 60  # white digit on black
    assert np.array_equal(a, b)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(PipelineError, match=r"cannot read .*bad\.png as an image"):
        images.read_image(tmp_path / "bad.png")


def test_read_npy_shapes_and_ranges(tmp_path):
    np.save(tmp_path / "one.npy", digit_one())
    np.save(tmp_path / "many.npy", np.stack([digit_one()] * 3).astype(np.float64))
    np.save(tmp_path / "unit.npy", np.stack([digit_one()] * 3).astype(np.float64) / 255.0)
    np.save(tmp_path / "flat.npy", np.zeros((3, 784)))
    np.save(tmp_path / "neg.npy", -np.ones((1, 28, 28)))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert images.read_npy(tmp_path / "one.npy").shape == (1, 28, 28)
    many = images.read_npy(tmp_path / "many.npy")
    assert many.dtype == np.float32 and many.shape == (3, 28, 28) and many.max() == pytest.approx(255.0)
    with pytest.raises(PipelineError, match=r"scaled to \[0, 1\]; pass values in 0..255"):
        images.read_npy(tmp_path / "unit.npy")  # refused like learn_model refuses it, never guessed
    with pytest.raises(PipelineError, match=r"shape \(N, 28, 28\)"):
        images.read_npy(tmp_path / "flat.npy")
    with pytest.raises(PipelineError, match=r"must be in 0\.\.255"):
        images.read_npy(tmp_path / "neg.npy")
    with pytest.raises(PipelineError, match="cannot read"):
        images.read_npy(tmp_path / "obj.npy")  # pickled object arrays are never loaded


def test_read_images_names_each_image(tmp_path):
    Image.fromarray(digit_one()).save(tmp_path / "a.png")
    np.save(tmp_path / "b.npy", np.stack([digit_one()] * 2))
    names, x = images.read_images([tmp_path / "a.png", tmp_path / "b.npy"])
    assert names == [str(tmp_path / "a.png"), f"{tmp_path / 'b.npy'}[0]", f"{tmp_path / 'b.npy'}[1]"]
    assert x.shape == (3, 28, 28) and x.dtype == np.float32
    with pytest.raises(PipelineError, match="does not exist"):
        images.read_images([tmp_path / "missing.png"])


# ---- models and URIs ------------------------------------------------------------------------------------


class ProbModel:
    """Returns one-hot probabilities of `label`, recording the batch sizes it saw."""

    def __init__(self, label: int = 3, width: int = 10):
        self.label, self.width, self.batches = label, width, []

    def predict(self, x):
        self.batches.append(len(x))
        out = np.zeros((len(x), self.width), np.float32)
        out[:, self.label] = 1.0
        return out


def test_classifier_scores_in_batches_and_checks_the_output():
    model = ProbModel(label=7)
    clf = registry.Classifier(model, "models:/m/1", "1", batch_size=4)
    assert clf.predict(np.zeros((10, 28, 28), np.uint8)).tolist() == [7] * 10
    assert model.batches == [4, 4, 2]
    with pytest.raises(ValueError, match=r"shape \(N, 28, 28\)"):
        clf.predict(np.zeros((2, 784)))
    with pytest.raises(registry.RegistryError, match=r"not \(N, 10\)"):
        registry.Classifier(ProbModel(label=0, width=3), "models:/m/1").predict(np.zeros((2, 28, 28)))


@pytest.mark.parametrize("uri", ["/tmp/model", "file:///tmp/model", "models/model.pt", "models:/", "s3://b/m", ""])
def test_only_mlflow_store_uris_are_loaded(uri):
    with pytest.raises(registry.RegistryError, match="not allowed"):
        registry.check_uri(uri)


@pytest.mark.parametrize("uri", ["models:/m@champion", "models:/m/3", "models:/m-abc", "runs:/r1/model"])
def test_mlflow_uris_are_accepted(uri):
    assert registry.check_uri(uri) == uri


# ---- load_champion's fallback (fake registry) -----------------------------------------------------------


class FakeClient:
    def __init__(self, champion: int | None, gates: dict[int, str]):
        self.champion, self.gates = champion, gates

    def get_model_version_by_alias(self, name, alias):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        if self.champion is None:
            raise MlflowException(f"Registered model alias {alias} not found.", error_code=INVALID_PARAMETER_VALUE)
        return types.SimpleNamespace(version=str(self.champion))

    def search_model_versions(self, filter_string):
        return [types.SimpleNamespace(version=str(v), tags={"gate": g}) for v, g in self.gates.items()]


@pytest.fixture
def loads(monkeypatch):
    """Make load_model succeed only for the URIs in `loads.ok`, recording every attempt in `loads.tried`."""
    state = types.SimpleNamespace(ok=set(), tried=[])

    def fake_load(uri, version=None):
        state.tried.append(uri)
        if uri not in state.ok:
            raise OSError(f"No such file: {uri}/data/model.pt2")
        return registry.Classifier(ProbModel(), uri, version)

    monkeypatch.setattr(registry, "load_model", fake_load)
    return state


GATES = {1: "passed", 2: "failed", 3: "passed", 4: "passed", 5: "failed"}


def test_load_champion_loads_the_alias(loads):
    loads.ok.add("models:/m@champion")
    clf = registry.load_champion("m", client=FakeClient(4, GATES))
    assert (clf.uri, clf.version) == ("models:/m@champion", "4")


def test_load_champion_falls_back_to_the_newest_earlier_passed_version(loads, caplog):
    loads.ok.update({"models:/m/1", "models:/m/3"})
    with caplog.at_level(logging.WARNING, logger="rotmnist.tracking.registry"):
        clf = registry.load_champion("m", client=FakeClient(4, GATES))
    assert clf.version == "3"
    assert loads.tried == ["models:/m@champion", "models:/m/3"]  # never v5 (newer) nor v2 (failed)
    assert "version 4 failed to load" in caplog.text and "fell back to version 3" in caplog.text


def test_load_champion_skips_versions_that_do_not_load_either(loads):
    loads.ok.add("models:/m/1")
    assert registry.load_champion("m", client=FakeClient(4, GATES)).version == "1"


def test_load_champion_error_when_nothing_loads(loads):
    with pytest.raises(registry.RegistryError, match=r"no version of 'm' could be loaded.*v4: OSError.*v3.*v1"):
        registry.load_champion("m", client=FakeClient(4, GATES))
    with pytest.raises(registry.RegistryError, match="has no version with alias 'champion'"):
        registry.load_champion("m", client=FakeClient(None, GATES))


# ---- rotmnist predict ---------------------------------------------------------------------------------------


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
