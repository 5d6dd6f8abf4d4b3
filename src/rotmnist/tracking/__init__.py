"""MLflow and Optuna: the store, each stage's runs, the Model Registry, and the sweep with its storage."""
