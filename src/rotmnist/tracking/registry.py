"""The MLflow Model Registry: register a candidate, load a model (the champion, with its fallback).

Only MLflow model URIs are ever loaded (`models:/...`, `runs:/...`): the weights come from the
tracking store, never from a pickle lying elsewhere on disk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rotmnist.errors import PipelineError, first_line
from rotmnist.learning.gate import GATE_PASSED, GATE_TAG
from rotmnist.spec import EVAL_BATCH, IMAGE_SHAPE, N_CLASSES

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

CHAMPION, CANDIDATE = "champion", "candidate"
ALLOWED_SCHEMES = ("models:/", "runs:/")
PYFUNC_LOADER = "mlflow.pytorch"  # the only loader a model of ours declares


class RegistryError(PipelineError):
    """No usable model in the registry (none registered, no champion, or no version loads)."""


@dataclass
class Classifier:
    """A loaded MLflow model scoring raw images (N, 28, 28), 0-255: `predict` gives labels, `predict_proba` classes."""

    model: Any  # mlflow.pyfunc.PyFuncModel (or anything whose predict returns (N, 10) probabilities)
    uri: str
    version: str | None = None
    batch_size: int = EVAL_BATCH

    def predict_proba(self, x: np.ndarray, progress: str | None = None) -> np.ndarray:
        """Class probabilities (N, 10), scored in batches (with a progress bar titled `progress`, if given)."""
        from tqdm import tqdm

        x = as_image_batch(x)
        if len(x) == 0:
            return np.zeros((0, N_CLASSES), np.float32)
        starts = range(0, len(x), self.batch_size)
        if progress:
            starts = tqdm(starts, desc=progress, unit="batch", leave=False, disable=None)
        probs = np.concatenate([np.asarray(self.model.predict(x[i : i + self.batch_size])) for i in starts])
        if probs.shape != (len(x), N_CLASSES):
            raise RegistryError(f"model {self.uri} returned shape {probs.shape} for {len(x)} images, not (N, 10)")
        return probs

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted digit (int64) for each image: what `monitor_perf` expects of a model."""
        return self.predict_proba(x).argmax(axis=1)

    def __str__(self) -> str:
        return f"{self.uri} (version {self.version})" if self.version else self.uri


def as_image_batch(x: Any) -> np.ndarray:
    """Raw images as a contiguous float32 (N, 28, 28) array (the models' input contract)."""
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"images must have shape (N, 28, 28), got {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def check_uri(uri: str) -> str:
    """Accept only MLflow store URIs, so no file from outside the tracking store is unpickled."""
    if not isinstance(uri, str) or not uri.startswith(ALLOWED_SCHEMES) or uri in ALLOWED_SCHEMES:
        raise RegistryError(
            f"model URI {uri!r} is not allowed; use models:/<name>@<alias>, models:/<name>/<version> "
            "or runs:/<run_id>/<path> (files on disk are never loaded)"
        )
    return uri


def check_pickle_free(model_dir: Path, uri: str) -> None:
    """Refuse a model folder that would unpickle anything: only a `torch.export` (pt2) PyTorch model passes.

    A replaced artifact could declare another pyfunc loader (a cloudpickled PythonModel) or hold a pickled
    `model.pth` that MLflow's PyTorch loader would prefer over `model.pt2`; both would run code on loading
    (MLflow refuses them too, unless MLFLOW_ALLOW_PICKLE_DESERIALIZATION is set). Checked before loading.
    """
    import zipfile

    import yaml

    try:
        flavors = (yaml.safe_load((model_dir / "MLmodel").read_text()) or {}).get("flavors") or {}
    except (OSError, yaml.YAMLError, AttributeError) as err:
        raise RegistryError(f"model {uri} has no readable MLmodel file: {_short(err)}") from None
    pyfunc, torch_flavor = flavors.get("python_function") or {}, flavors.get("pytorch") or {}
    data = model_dir / str(torch_flavor.get("model_data", "data"))
    problems = []
    if pyfunc.get("loader_module") != PYFUNC_LOADER or not torch_flavor:
        problems.append(f"its loader is {pyfunc.get('loader_module')!r}, not the PyTorch flavor's")
    pt2 = data / "model.pt2"
    if not pt2.exists() and not (data / "model.pth").exists():
        raise RegistryError(f"cannot load model {uri}: its weights {pt2.relative_to(model_dir)} are missing")
    if not pt2.is_file() or not zipfile.is_zipfile(pt2) or (data / "model.pth").exists():
        problems.append("it is not a torch.export (pt2) model")
    if problems:
        raise RegistryError(f"refusing to load model {uri}: {'; '.join(problems)} (it could run code when loaded)")


def warn_on_other_versions(model_dir: Path, uri: str) -> None:
    """Log a warning for each package the model pinned (its requirements.txt: torch, numpy, mlflow) that is
    installed at another version, as MLflow's loader does. MLflow's own check maps every installed
    distribution to its modules first (about 2.5 s per load); the pins name their packages already."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import InvalidRequirement, Requirement

    path = model_dir / "requirements.txt"
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in lines:
        try:
            pin = Requirement(line.split("#", 1)[0].strip())
        except InvalidRequirement:  # blank lines, comments, pip options such as -r
            continue
        try:
            installed = version(pin.name)
        except PackageNotFoundError:
            installed = None
        if installed is None or not pin.specifier.contains(installed, prereleases=True):
            log.warning("model %s was logged with %s; this environment has %s", uri, pin, installed or "none")


def _broken_model_errors() -> tuple[type[Exception], ...]:
    """What a missing or damaged model artifact, or a store that fails, raises while a model is fetched and loaded.

    MLflow's errors (the store, the artifact repository), I/O, and what torch's pt2 archive reader raises for
    a damaged archive: a bad zip, a bad or missing member (RuntimeError, ValueError, JSON), a damaged pickled
    sample input, and its own `assert`s on the archive's format. Anything else is a bug and propagates.
    """
    import pickle
    import zipfile

    from mlflow.exceptions import MlflowException

    archive = (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, AssertionError)
    return (MlflowException, OSError, RuntimeError, ValueError, *archive)


def load_model(uri: str, version: str | None = None) -> Classifier:
    """Load an MLflow model, pickle-free (`check_pickle_free`); check that it scores a blank image as 10 classes.

    A model that cannot be fetched, loaded or run is a RegistryError naming the first cause.
    """
    import tempfile

    import mlflow.artifacts
    import mlflow.pyfunc

    import rotmnist.learning.model  # noqa: F401  (quiets torch's note on loading a pooled graph)

    broken = _broken_model_errors()
    try:
        with tempfile.TemporaryDirectory(prefix="rotmnist-model-") as tmp:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=check_uri(uri), dst_path=tmp))
            check_pickle_free(local, uri)
            warn_on_other_versions(local, uri)
            model = mlflow.pyfunc.load_model(str(local), suppress_warnings=True)  # checked just above
    except broken as err:
        raise RegistryError(f"cannot load model {uri}: {_short(err)}") from err
    clf = Classifier(model, uri, version)
    try:
        clf.predict_proba(np.zeros((1, *IMAGE_SHAPE), np.float32))
    except broken as err:  # loaded, but does not run: weights that do not fit the graph
        raise RegistryError(f"model {uri} does not score a blank image: {_short(err)}") from err
    return clf


def champion_version(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version `name@champion` points to, or None when the model or the alias does not exist.

    MLflow's basic-auth server answers 403, not 404, for a model that does not exist: a 403 on a model
    nobody registered means "no champion"; on one that exists it is a real refusal.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        if err.error_code == "PERMISSION_DENIED" and not client.search_registered_models(f"name = '{_quote(name)}'"):
            return None
        raise


def model_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    """Every version of `name`, newest first (empty if the model is not registered)."""
    versions = client.search_model_versions(f"name = '{_quote(name)}'")
    return sorted(versions, key=lambda v: int(v.version), reverse=True)


def register_candidate(client: MlflowClient, name: str, model_uri: str, run_id: str) -> ModelVersion:
    """Register `model_uri` as a new version of `name`, or reuse the version already made from it."""
    import mlflow

    check_uri(model_uri)
    for v in model_versions(client, name):
        if v.source == model_uri and v.run_id == run_id:
            log.info("%s is already registered as %s version %s; re-evaluating it", model_uri, name, v.version)
            return v
    return mlflow.register_model(model_uri, name, tags={"training_run_id": run_id})


def record_decision(client: MlflowClient, name: str, version: str, tags: dict[str, str], *, promoted: bool) -> None:
    """Tag `version` with the gate's decision; point `candidate` at it, and `champion` too if it passed.

    `champion` moves last: until it does, the registry's champion is the one the decision was compared with.
    """
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CANDIDATE, version)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)


def record_on_training_run(
    client: MlflowClient, run_id: str, report: dict[str, Any], metrics: dict[str, float], plot_dir: Path
) -> None:
    """Add the holdout metrics, the gate's decision, the report and its plots to the run that trained the candidate."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    r = report["registry"]
    client.set_tag(run_id, "gate", report["gate"]["decision"])
    client.set_tag(run_id, "registered_version", f"{r['model_name']}/{r['version']}")
    client.log_dict(run_id, report, "monitor/monitor.json")
    client.log_artifacts(run_id, str(plot_dir), "monitor")


def load_champion(name: str, *, client: MlflowClient | None = None) -> Classifier:
    """Load `models:/<name>@champion`; if it fails, the newest earlier version whose gate passed.

    Uses the current MLflow tracking/registry URI. Raises RegistryError if nothing loads.
    """
    from mlflow import MlflowClient

    client = client or MlflowClient()
    champ = champion_version(client, name)
    if champ is None:
        raise RegistryError(
            f"registered model {name!r} has no version with alias '{CHAMPION}'; "
            "run `rotmnist monitor` (or `dvc repro`) to register and promote one"
        )
    try:
        return load_model(f"models:/{name}@{CHAMPION}", str(champ.version))
    except RegistryError as err:  # a missing or damaged artifact, a failing store; a bug in our code propagates
        first_error = err
    tried = [f"v{champ.version}: {_short(first_error)}"]
    earlier = [
        v
        for v in model_versions(client, name)
        if int(v.version) < int(champ.version) and v.tags.get(GATE_TAG) == GATE_PASSED
    ]
    for v in earlier:
        try:
            clf = load_model(f"models:/{name}/{v.version}", str(v.version))
        except RegistryError as err:
            tried.append(f"v{v.version}: {_short(err)}")
            continue
        log.warning(
            "champion %s version %s failed to load (%s); fell back to version %s, the newest earlier version "
            "whose gate passed",
            name,
            champ.version,
            _short(first_error),
            v.version,
        )
        return clf
    raise RegistryError(
        f"no version of {name!r} could be loaded: champion and every earlier version whose gate passed failed "
        f"({'; '.join(tried)})"
    )


def _short(err: BaseException) -> str:
    return f"{type(err).__name__}: {first_line(err, limit=None)}"[:300]


def _quote(value: str) -> str:
    return value.replace("'", "\\'")
