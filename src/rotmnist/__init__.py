"""rotmnist: a rotation-robust MNIST classifier, built by a DVC pipeline and tracked in MLflow."""

__version__ = "0.1.0"
