"""The tracking part: MLflow runs, the store they go to, and the model registry."""
