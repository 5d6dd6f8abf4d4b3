"""The offline commands outside `dvc.yaml`: `predict` and `drift`, one module each; none imports another."""
