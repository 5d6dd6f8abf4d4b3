"""Model families (CNN, MLP, logistic regression) from one factory, the raw-image classifier, and train's model.

Every family is "optional conv feature extractor + dense head"; the families differ only in their spec
(a plain dict, validated by `spec.normalize_spec`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rotmnist.errors import PipelineError, first_line
from rotmnist.io import read_json
from rotmnist.spec import EVAL_BATCH, IMAGE_SHAPE, N_CLASSES, normalize_spec

IMAGE_SIDE = IMAGE_SHAPE[0]
# torch notes on every load of an exported pooled model that the pooling branch's row count is not in the
# outer graph: true of any graph with a data-dependent branch, and nothing a user can act on.
logging.getLogger("torch._export.serde.serialize").addFilter(
    lambda record: "did not appear in the graph" not in record.getMessage()
)
# Pixel statistics of upright MNIST on the 0-255 scale; `train` replaces them with its training set's own.
DEFAULT_MEAN, DEFAULT_STD = 33.32, 78.57


def _dense_head(in_features: int, widths: list[int], dropout: float) -> list[nn.Module]:
    """Hidden dense layers (ReLU, dropout) then the 10-way output layer."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_features = width
    layers.append(nn.Linear(in_features, N_CLASSES))
    return layers


def _conv_blocks(spec: dict[str, Any]) -> tuple[list[nn.Module], int]:
    """Conv blocks (conv [BN] ReLU, x convs_per_block, then 2x2 max-pool); return layers and flat size."""
    layers: list[nn.Module] = []
    channels_in, side, k = 1, IMAGE_SIDE, spec["kernel"]
    for block in range(spec["blocks"]):
        channels_out = spec["channels"] * 2**block
        for _ in range(spec["convs_per_block"]):
            layers.append(nn.Conv2d(channels_in, channels_out, k, padding=k // 2, bias=not spec["batch_norm"]))
            if spec["batch_norm"]:
                layers.append(nn.BatchNorm2d(channels_out))
            layers.append(nn.ReLU(inplace=True))
            channels_in = channels_out
        layers.append(nn.MaxPool2d(2))
        side //= 2
    return layers, channels_in * side * side


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    """The network of a spec: takes normalised images (N, 1, 28, 28), returns logits (N, 10)."""
    spec = normalize_spec(spec)
    family = spec["family"]
    if family == "cnn":
        features, flat = _conv_blocks(spec)
        widths = [spec["dense"]] if spec["dense"] else []
        dropout = spec["dropout"]
    elif family == "mlp":
        features, flat = [], IMAGE_SIDE * IMAGE_SIDE
        widths, dropout = [spec["width"]] * spec["layers"], spec["dropout"]
    else:  # logreg: no hidden layer
        features, flat, widths, dropout = [], IMAGE_SIDE * IMAGE_SIDE, [], 0.0
    return nn.Sequential(*features, nn.Flatten(), *_dense_head(flat, widths, dropout))


@dataclass(frozen=True)
class Pooling:
    """Orientation pooling: a digit the model is unsure of is scored turned by each of `orientations` (degrees,
    counter-clockwise as displayed; 0, the digit as drawn, among them) and the probabilities are averaged.

    Unsure means a top probability below `below` on the digit as drawn; `below` 1 pools every digit, and
    `orientations` (0,) pools none.
    """

    orientations: tuple[int, ...] = (0,)
    below: float = 1.0

    def __post_init__(self) -> None:
        if 0 not in self.orientations or len(set(self.orientations)) != len(self.orientations):
            raise ValueError(f"orientations must hold 0 and no angle twice, got {list(self.orientations)}")
        if not 0.0 < self.below <= 1.0:
            raise ValueError(f"below must be in (0, 1], got {self.below}")

    @classmethod
    def of(cls, reference: Mapping[str, Any]) -> Pooling:
        """The pooling a model reference (`models/run.json`) records; none if it records none."""
        saved = reference.get("pooling") or {}
        return cls(tuple(saved.get("orientations", (0,))), float(saved.get("below", 1.0)))

    def record(self) -> dict[str, Any]:
        """The reference's record of this pooling (what `of` reads back)."""
        return {"orientations": list(self.orientations), "below": self.below}


def turn_grids(angles: Sequence[int]) -> torch.Tensor:
    """Sampling grids (k, 28, 28, 2) that turn an image by each angle, as `learning.circle.turned` does."""
    grids = [torch.zeros(0, IMAGE_SIDE, IMAGE_SIDE, 2)]
    for angle in angles:
        t = math.radians(angle)
        theta = torch.tensor([[[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]]])
        grids.append(F.affine_grid(theta, [1, 1, IMAGE_SIDE, IMAGE_SIDE], align_corners=False))
    return torch.cat(grids)


def _as_drawn(x: torch.Tensor, probs: torch.Tensor, unsure: torch.Tensor) -> torch.Tensor:
    return probs.clone()  # torch.cond's branches may not return an input itself


class RawImageClassifier(nn.Module):
    """Scores images as users have them: float (N, 28, 28) pixels 0-255 -> class probabilities (N, 10).

    The normalisation constants are buffers, so they travel with the state dict and the exported model.
    The orientation pooling (`pool`) travels with the exported model only: the state dict holds weights alone.
    """

    def __init__(
        self, net: nn.Module, mean: float = DEFAULT_MEAN, std: float = DEFAULT_STD, pooling: Pooling = Pooling()
    ):
        super().__init__()
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.net = net
        self.register_buffer("mean", torch.tensor(float(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(float(std), dtype=torch.float32))
        self.pool(pooling)

    def pool(self, pooling: Pooling) -> RawImageClassifier:
        """Score with `pooling` from now on (training, which uses `logits`, is unaffected); returns self."""
        self.pooling = pooling
        turns = [a for a in pooling.orientations if a != 0]
        self.register_buffer("turn_grids", turn_grids(turns).to(self.mean.device), persistent=False)
        self.pool_below = math.inf if pooling.below >= 1.0 else pooling.below
        return self

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of raw images (N, 28, 28) in 0..255 (any real dtype); what training optimises."""
        x = (x.float() - self.mean) / self.std
        return self.net(x.unsqueeze(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.logits(x), dim=1)
        if len(self.turn_grids) == 0:
            return probs
        unsure = probs.amax(dim=1) < self.pool_below
        if torch.compiler.is_exporting():  # the exported graph decides per batch, as eager code does here
            return torch.cond(unsure.any(), self._pooled, _as_drawn, (x.float(), probs, unsure))
        return self._pooled(x.float(), probs, unsure) if bool(unsure.any()) else probs

    def _pooled(self, x: torch.Tensor, probs: torch.Tensor, unsure: torch.Tensor) -> torch.Tensor:
        """`probs` with each unsure digit's row the mean over its turned copies, scored as one batch."""
        rows = unsure.nonzero()[:, 0]
        n, k = rows.shape[0], self.turn_grids.shape[0]
        torch._check(n > 0)  # an unbacked size when exported: this branch runs only when a digit is unsure
        copies = x[rows].unsqueeze(0).expand(k, n, IMAGE_SIDE, IMAGE_SIDE).reshape(k * n, 1, IMAGE_SIDE, IMAGE_SIDE)
        grids = (
            self.turn_grids.unsqueeze(1)
            .expand(k, n, IMAGE_SIDE, IMAGE_SIDE, 2)
            .reshape(k * n, IMAGE_SIDE, IMAGE_SIDE, 2)
        )
        turned = F.grid_sample(copies, grids, mode="bilinear", padding_mode="zeros", align_corners=False)
        turned_probs = torch.softmax(self.logits(turned[:, 0]), dim=1).view(k, n, N_CLASSES)
        return probs.index_put((rows,), (turned_probs.sum(dim=0) + probs[rows]) / (k + 1))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted digits of raw images (N, 28, 28): the `.predict` that `monitor_perf` expects."""
        return predict_labels(self, x)


def classifier_from_spec(
    spec: Mapping[str, Any], mean: float = DEFAULT_MEAN, std: float = DEFAULT_STD, pooling: Pooling = Pooling()
) -> RawImageClassifier:
    """A fresh RawImageClassifier of `spec` (the layout `models/model.pt` is saved in)."""
    return RawImageClassifier(build_model(spec), mean, std, pooling)


def _batches(module: RawImageClassifier, x: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    """Class probabilities of `x`, a batch at a time, as the model scores (its pooling included)."""
    if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        shape = getattr(x, "shape", None)
        raise ValueError(f"images must be a numpy array of shape (N, 28, 28), got {type(x).__name__} {shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                yield module(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])).to(device))
    finally:
        module.train(was_training)


def predict_proba(module: RawImageClassifier, x: np.ndarray, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Class probabilities (N, 10) float32 of raw images (uint8 or float, 0-255), batched, in eval mode."""
    parts = [p.float().cpu().numpy() for p in _batches(module, x, batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, N_CLASSES), np.float32)


def predict_labels(module: RawImageClassifier, x: np.ndarray, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Predicted digits (N,) int64 of raw images (uint8 or float, 0-255), batched, in eval mode."""
    parts = [p.argmax(1).cpu().numpy() for p in _batches(module, x, batch_size)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def serving_copy(model: RawImageClassifier) -> RawImageClassifier:
    """`model` as it is served: on the CPU, contiguous memory layout, eval mode."""
    return model.to(memory_format=torch.contiguous_format).cpu().eval()


def load_pipeline_model(model_file: Path, run_reference: Path) -> tuple[RawImageClassifier, dict[str, Any]]:
    """The model `train` wrote (`models/model.pt`, built from the spec in `models/run.json`, scoring with the
    pooling it records) and that reference."""
    reference = read_json(run_reference, made_by="train")
    if not isinstance(reference, dict) or not isinstance(reference.get("spec"), dict):
        raise PipelineError(f"{run_reference} lacks the model spec; run `rotmnist train` again")
    try:
        pooling = Pooling.of(reference)
    except (TypeError, ValueError) as err:
        raise PipelineError(f"{run_reference} records a bad pooling ({err}); run `rotmnist train` again") from None
    try:
        model = classifier_from_spec(normalize_spec(reference["spec"]), pooling=pooling)
        model.load_state_dict(torch.load(model_file, map_location="cpu", weights_only=True))
    except FileNotFoundError:
        raise PipelineError(f"{model_file} does not exist; run `rotmnist train` first") from None
    except (ValueError, RuntimeError, OSError) as err:
        first = first_line(err)
        raise PipelineError(
            f"{model_file} does not load as the model in {run_reference} ({first}); run `rotmnist train` again"
        ) from None
    return serving_copy(model), reference
