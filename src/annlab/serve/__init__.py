"""The model in use: raw inputs in, predictions out, and the MLflow model around it."""
