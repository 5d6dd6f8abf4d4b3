"""Registry loading: the classifier wrapper, allowed URIs, and the champion's fallback (fake client)."""

import io
import logging
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rotmnist.tracking import registry
from tests.support.fakes import ProbModel

# ---- models and URIs ------------------------------------------------------------------------------------


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
    state = types.SimpleNamespace(ok=set(), bugs=set(), tried=[])

    def fake_load(uri, version=None):
        state.tried.append(uri)
        if uri in state.bugs:
            raise TypeError("a bug in our own loading code")
        if uri not in state.ok:  # what load_model raises for a missing artifact
            raise registry.RegistryError(f"cannot load model {uri}: OSError: No such file: {uri}/data/model.pt2")
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


def test_a_bug_in_loading_surfaces_instead_of_serving_an_older_champion(loads):
    loads.ok.update({"models:/m/1", "models:/m/3"})
    loads.bugs.add("models:/m@champion")
    with pytest.raises(TypeError, match="a bug in our own loading code"):
        registry.load_champion("m", client=FakeClient(4, GATES))
    assert loads.tried == ["models:/m@champion"]  # no fallback tried


def test_load_champion_error_when_nothing_loads(loads):
    tried = r"v4: RegistryError: cannot load model models:/m@champion: OSError.*v3.*v1"
    with pytest.raises(registry.RegistryError, match=rf"no version of 'm' could be loaded.*{tried}"):
        registry.load_champion("m", client=FakeClient(4, GATES))
    with pytest.raises(registry.RegistryError, match="has no version with alias 'champion'"):
        registry.load_champion("m", client=FakeClient(None, GATES))


class _Refusing:
    """A client of a server with logins: 403 for the alias, and the registered models it lists."""

    def __init__(self, registered: list[str]):
        self.registered = registered

    def get_model_version_by_alias(self, name, alias):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

        raise MlflowException("Permission denied", error_code=PERMISSION_DENIED)

    def search_registered_models(self, filter_string):
        return [n for n in self.registered if f"'{n}'" in filter_string]


def test_a_403_for_a_model_nobody_registered_means_no_champion():
    from mlflow.exceptions import MlflowException

    from rotmnist.tracking.registry import champion_version

    assert champion_version(_Refusing([]), "digits") is None
    with pytest.raises(MlflowException, match="Permission denied"):  # a real refusal on an existing model
        champion_version(_Refusing(["digits"]), "digits")


# ---- a real logged model, damaged on disk ----------------------------------------------------------------


def _rewrite_member(archive: Path, good: bytes, member: str, damage: str) -> None:
    """`archive` as `good` with one member (by its path inside the pt2 archive's folder) damaged or left out."""
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(archive, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.split("/", 1)[1] == member:
                if damage == "drop":
                    continue
                data = data[: len(data) // 2] if damage == "half" else b"\x07garbage" * 8
            dst.writestr(name, data)


@pytest.mark.slow  # torch.export
def test_a_damaged_artifact_is_a_registry_error_and_a_bug_in_loading_propagates(ws, monkeypatch):
    import mlflow
    import torch

    from rotmnist.learning.model import classifier_from_spec
    from rotmnist.tracking import store
    from rotmnist.tracking import train as training_run
    from tests.support.tracking import mlflow_config

    store.configure_mlflow(mlflow_config(), ws)
    torch.manual_seed(0)
    with mlflow.start_run():
        uri = training_run.log_classifier(classifier_from_spec({"family": "cnn", "blocks": 1, "channels": 2}))
    folder = Path(mlflow.get_logged_model(uri.removeprefix("models:/")).artifact_location.removeprefix("file://"))
    archive = folder / "data" / "model.pt2"
    good = archive.read_bytes()
    # what torch's pt2 reader raises for each: AssertionError, UnpicklingError, JSONDecodeError, RuntimeError
    damages = [
        ("archive_format", "garbage"),
        ("data/sample_inputs/model.pt", "garbage"),
        ("models/model.json", "half"),
        ("data/weights/weight_0", "drop"),
    ]
    for member, damage in damages:
        _rewrite_member(archive, good, member, damage)
        with pytest.raises(registry.RegistryError, match=f"cannot load model {uri}: "):
            registry.load_model(uri)
    archive.write_bytes(good[: len(good) // 2])  # a truncated archive is no zip at all
    with pytest.raises(registry.RegistryError, match=r"it is not a torch\.export"):
        registry.load_model(uri)
    archive.write_bytes(good)
    assert registry.load_model(uri).predict(np.zeros((2, 28, 28), np.float32)).shape == (2,)

    def buggy(*args, **kwargs):
        raise TypeError("a bug in our own loading code")

    monkeypatch.setattr(mlflow.pyfunc, "load_model", buggy)
    with pytest.raises(TypeError, match="a bug in our own loading code"):
        registry.load_model(uri)


def test_a_pinned_package_at_another_version_is_a_warning_naming_both(tmp_path, caplog):
    import numpy

    (tmp_path / "requirements.txt").write_text(
        f"mlflow\nnumpy=={numpy.__version__}\n-r other.txt\n# pins\nnumpy<1.0\nno-such-package-here==1.0\n"
    )
    with caplog.at_level(logging.WARNING, "rotmnist.tracking.registry"):
        registry.warn_on_other_versions(tmp_path, "models:/m/1")
    assert [r.getMessage() for r in caplog.records] == [
        f"model models:/m/1 was logged with numpy<1.0; this environment has {numpy.__version__}",
        "model models:/m/1 was logged with no-such-package-here==1.0; this environment has none",
    ]
    caplog.clear()
    (tmp_path / "requirements.txt").unlink()
    registry.warn_on_other_versions(tmp_path, "models:/m/1")  # a model without pins: nothing to check
    assert caplog.records == []
