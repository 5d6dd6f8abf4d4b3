"""Computing with torch, numpy and matplotlib (no MLflow, no Optuna): models, the training loop, metrics, the gate."""
