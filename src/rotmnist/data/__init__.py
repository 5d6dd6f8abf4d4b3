"""Datasets without a model: MNIST sources, rotation, image decoding, by-source sampling, the split."""
