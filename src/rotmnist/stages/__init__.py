"""The thin mains of `dvc.yaml`'s stages, one module per stage; none imports another."""
