"""Model families (CNN, MLP, logistic regression) from one factory, the raw-image classifier, and train's model.

Every family is "optional conv feature extractor + dense head"; the families differ only in their spec
(a plain dict, validated by `spec.normalize_spec`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rotmnist.errors import PipelineError, first_line
from rotmnist.io import read_json
from rotmnist.spec import EVAL_BATCH, IMAGE_SHAPE, N_CLASSES, normalize_spec

IMAGE_SIDE = IMAGE_SHAPE[0]
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


class RawImageClassifier(nn.Module):
    """Scores images as users have them: float (N, 28, 28) pixels 0-255 -> class probabilities (N, 10).

    The normalisation constants are buffers, so they travel with the state dict and the exported model.
    """

    def __init__(self, net: nn.Module, mean: float = DEFAULT_MEAN, std: float = DEFAULT_STD):
        super().__init__()
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.net = net
        self.register_buffer("mean", torch.tensor(float(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(float(std), dtype=torch.float32))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of raw images (N, 28, 28) in 0..255 (any real dtype); what training optimises."""
        x = (x.float() - self.mean) / self.std
        return self.net(x.unsqueeze(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted digits of raw images (N, 28, 28): the `.predict` that `monitor_perf` expects."""
        return predict_labels(self, x)


def classifier_from_spec(
    spec: Mapping[str, Any], mean: float = DEFAULT_MEAN, std: float = DEFAULT_STD
) -> RawImageClassifier:
    """A fresh RawImageClassifier of `spec` (the layout `models/model.pt` is saved in)."""
    return RawImageClassifier(build_model(spec), mean, std)


def _batches(module: RawImageClassifier, x: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
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
                yield module.logits(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])).to(device))
    finally:
        module.train(was_training)


def predict_proba(module: RawImageClassifier, x: np.ndarray, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Class probabilities (N, 10) float32 of raw images (uint8 or float, 0-255), batched, in eval mode."""
    parts = [torch.softmax(z, 1).float().cpu().numpy() for z in _batches(module, x, batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, N_CLASSES), np.float32)


def predict_labels(module: RawImageClassifier, x: np.ndarray, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Predicted digits (N,) int64 of raw images (uint8 or float, 0-255), batched, in eval mode."""
    parts = [z.argmax(1).cpu().numpy() for z in _batches(module, x, batch_size)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def serving_copy(model: RawImageClassifier) -> RawImageClassifier:
    """`model` as it is served: on the CPU, contiguous memory layout, eval mode."""
    return model.to(memory_format=torch.contiguous_format).cpu().eval()


def load_pipeline_model(model_file: Path, run_reference: Path) -> tuple[RawImageClassifier, dict[str, Any]]:
    """The model `train` wrote (`models/model.pt`, built from the spec in `models/run.json`) and that reference."""
    reference = read_json(run_reference, made_by="train")
    if not isinstance(reference, dict) or not isinstance(reference.get("spec"), dict):
        raise PipelineError(f"{run_reference} lacks the model spec; run `rotmnist train` again")
    try:
        model = classifier_from_spec(normalize_spec(reference["spec"]))
        model.load_state_dict(torch.load(model_file, map_location="cpu", weights_only=True))
    except FileNotFoundError:
        raise PipelineError(f"{model_file} does not exist; run `rotmnist train` first") from None
    except (ValueError, RuntimeError, OSError) as err:
        first = first_line(err)
        raise PipelineError(
            f"{model_file} does not load as the model in {run_reference} ({first}); run `rotmnist train` again"
        ) from None
    return serving_copy(model), reference
