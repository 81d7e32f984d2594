"""MLflow's entry to the annlab model ("models from code"): MLflow runs this file to build the
model, so no pickle of a Python object is ever stored or loaded."""

import mlflow

from annlab.serve.pyfunc import AnnlabModel

mlflow.models.set_model(AnnlabModel())
