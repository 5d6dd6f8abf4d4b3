"""Storage that is not MLflow: the server's request log (SQL), store URLs, and the lock of a shared store."""
