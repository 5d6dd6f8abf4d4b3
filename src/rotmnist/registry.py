"""The MLflow Model Registry side: load a model (the champion, with fallback), and `rotmnist predict`.

Only MLflow model URIs are ever loaded (`models:/...`, `runs:/...`): the weights come from the
tracking store, never from a pickle lying elsewhere on disk.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rotmnist.errors import PipelineError
from rotmnist.io import N_CLASSES

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from rotmnist.config import Config
    from rotmnist.paths import Paths

log = logging.getLogger(__name__)

CHAMPION, CANDIDATE = "champion", "candidate"
# Model version tag holding the gate's decision; the fallback trusts only versions tagged "passed".
GATE_TAG = "gate"
GATE_PASSED, GATE_FAILED = "passed", "failed"
ALLOWED_SCHEMES = ("models:/", "runs:/")
BATCH_SIZE = 2048


class RegistryError(PipelineError):
    """No usable model in the registry (none registered, no champion, or no version loads)."""


@dataclass
class Classifier:
    """A loaded MLflow model scoring raw images (N, 28, 28), 0-255: `predict` gives labels, `predict_proba` classes."""

    model: Any  # mlflow.pyfunc.PyFuncModel (or anything whose predict returns (N, 10) probabilities)
    uri: str
    version: str | None = None
    batch_size: int = BATCH_SIZE

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
    if x.ndim != 3 or x.shape[1:] != (28, 28):
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


def load_model(uri: str, version: str | None = None) -> Classifier:
    """Load an MLflow model and check that it scores one blank image as 10 probabilities."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(check_uri(uri))
    clf = Classifier(model, uri, version)
    clf.predict_proba(np.zeros((1, 28, 28), np.float32))
    return clf


def champion_version(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version `name@champion` points to, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def model_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    """Every version of `name`, newest first (empty if the model is not registered)."""
    versions = client.search_model_versions(f"name = '{_quote(name)}'")
    return sorted(versions, key=lambda v: int(v.version), reverse=True)


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
    except Exception as err:  # any failure to load (missing file, corrupt archive) triggers the fallback
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
        except Exception as err:
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
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


# ---- images for `rotmnist predict` -------------------------------------------------------------


def to_mnist_image(gray: np.ndarray) -> np.ndarray:
    """A grayscale image (H, W) as MNIST sees digits: 28x28 uint8, white ink on black.

    A mostly light image (mean > 127.5) is taken to be dark ink on light paper and inverted. A 28x28
    image is otherwise kept as it is; any other size is cropped to its ink, scaled to fit 20x20
    (aspect kept) and centred by its centre of mass, as MNIST's digits were.
    """
    from PIL import Image

    g = np.asarray(gray, dtype=np.float32)
    if g.ndim != 2 or g.size == 0:
        raise ValueError(f"expected a 2-D grayscale image, got shape {g.shape}")
    if g.mean() > 127.5:
        g = 255.0 - g
    g = np.clip(g, 0, 255)
    if g.shape == (28, 28):
        return np.rint(g).astype(np.uint8)
    if g.max() <= 0:
        return np.zeros((28, 28), np.uint8)
    rows, cols = np.nonzero(g > 0.2 * g.max())
    crop = g[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = 20.0 / max(crop.shape)
    h, w = (max(1, round(s * scale)) for s in crop.shape)
    small = np.asarray(Image.fromarray(crop).resize((w, h), Image.Resampling.BILINEAR), np.float32)
    total = small.sum()
    if total > 0:
        cy = (small.sum(axis=1) * np.arange(h)).sum() / total
        cx = (small.sum(axis=0) * np.arange(w)).sum() / total
    else:
        cy, cx = (h - 1) / 2, (w - 1) / 2
    top = int(np.clip(round(13.5 - cy), 0, 28 - h))
    left = int(np.clip(round(13.5 - cx), 0, 28 - w))
    out = np.zeros((28, 28), np.float32)
    out[top : top + h, left : left + w] = small
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8)


def read_png(path: str | Path) -> np.ndarray:
    """An image file (PNG, any size or mode) as a 28x28 uint8 MNIST-style digit.

    With transparency, the alpha channel is the ink (a digit drawn on a transparent canvas).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                alpha = np.asarray(img.convert("RGBA"))[..., 3]
                if alpha.min() < 255:
                    return to_mnist_image(alpha)
            return to_mnist_image(np.asarray(img.convert("L")))
    except (UnidentifiedImageError, OSError) as err:
        raise PipelineError(f"cannot read {path} as an image: {err}") from None


def read_npy(path: str | Path) -> np.ndarray:
    """A .npy array of raw images (N, 28, 28) or one image (28, 28), pixel values 0-255, as float32."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise PipelineError(f"cannot read {path} as a .npy array: {err}") from None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (28, 28) or arr.dtype.kind not in "uif" or len(arr) == 0:
        raise PipelineError(f"{path}: expected a numeric array of shape (N, 28, 28), got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255:
        raise PipelineError(f"{path}: pixel values must be finite and within 0-255")
    if 0 < arr.max() <= 1.0:
        log.warning("%s: values are within 0-1; scaling them to 0-255", path)
        arr = arr * 255.0
    return arr


def read_images(files: Sequence[str | Path]) -> tuple[list[str], np.ndarray]:
    """Names and float32 (N, 28, 28) images from PNG files and/or .npy arrays."""
    names: list[str] = []
    batches: list[np.ndarray] = []
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise PipelineError(f"{path} does not exist")
        if path.suffix.lower() == ".npy":
            arr = read_npy(path)
            names += [f"{path}[{i}]" for i in range(len(arr))]
            batches.append(arr)
        else:
            names.append(str(path))
            batches.append(read_png(path)[None].astype(np.float32))
    if not batches:
        raise PipelineError("no images given")
    return names, np.concatenate(batches)


def predict_main(config: Config, paths: Paths, images: Sequence[str], model_uri: str | None = None) -> int:
    """`rotmnist predict`: print `<image>\\t<digit>\\t<probability>` per image; exit status 0, or 1 on error."""
    from rotmnist import tracking

    try:
        names, x = read_images(images)
        tracking.configure_mlflow(config, paths)
        model = load_model(model_uri) if model_uri else load_champion(config.monitor.model_name)
        probs = model.predict_proba(x)
    except Exception as err:
        if not isinstance(err, (PipelineError, FileNotFoundError)):
            log.debug("predict failed", exc_info=True)
        print(f"rotmnist predict: {err}", file=sys.stderr)
        return 1
    log.info("scored %d image(s) with %s", len(names), model)
    digits = probs.argmax(axis=1)
    for name, digit, p in zip(names, digits, probs[np.arange(len(digits)), digits], strict=True):
        print(f"{name}\t{int(digit)}\t{float(p):.4f}")
    return 0
