"""The MLflow model annlab logs for every run: a pyfunc around `served.Predictor`, so a logged,
registered or served model takes raw inputs (table rows with their original columns, strings
and missing values; pixels as the dataset has them) and returns class names and probabilities.

No pickle holds the preprocessing: it travels as JSON beside the Keras file, and the code as
this package (`code_paths`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from annlab.errors import UserError
from annlab.serve import served

ARTIFACT = "model_dir"
PACKAGE = Path(__file__).resolve().parents[1]  # src/annlab: shipped with the model
ENTRY = Path(__file__).resolve().parent / "pyfunc_entry.py"


class AnnlabModel(mlflow.pyfunc.PythonModel):
    """Raw inputs in, a DataFrame out: `predicted` (the class name) and `p(<class>)` for each class."""

    # The signature logged with the model is its schema; without this MLflow inspects predict()
    # for type hints of its own, and warns wherever the model loads that there are none.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        self.predictor = served.Predictor.load(context.artifacts[ARTIFACT])

    # No type hints: MLflow would read them as a schema of its own; the signature is the schema.
    def predict(self, context, model_input, params=None):
        try:
            out, warnings = self.predictor.predict_checked(model_input)
            if warnings:  # once per request; the response is unchanged
                logging.getLogger("annlab").warning(
                    "inputs unlike the training data: %s", "; ".join(warnings)
                )
            return out
        except UserError as exc:  # the scoring server answers 400 with the message
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None


def signature(predictor: served.Predictor) -> Any:
    """The raw inputs' schema (original columns, or the pixels' shape) and the output's."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec
    from mlflow.types.schema import AnyType

    if predictor.is_table:
        # Numeric columns as Any: MLflow refuses int64 for a double column ("cannot safely
        # convert"), and a user's integer column is a number like any other; the model checks
        # that each holds numbers, naming the column and row.
        inputs = Schema(
            [ColSpec(AnyType(), name) for name in predictor.columns["numeric"]]
            + [ColSpec("string", name) for name in predictor.columns["categorical"]]
        )
    elif len(predictor.shape) > 1:
        # Images come as (n, height, width[, channels]) or as flat rows (n, height·width[·channels]),
        # as scikit-learn's `data` and `fetch_openml` hold them. MLflow's tensor schema fixes the
        # rank, so it cannot take both: the model declares none, and checks type and shape itself
        # (`served.Predictor`), refusing anything else with a 400 that names both layouts.
        inputs = None
    else:
        # The dtype the dataset's samples have: MLflow checks it exactly.
        dtype = np.dtype(predictor.dataset.get("input_dtype") or "float64")
        inputs = Schema([TensorSpec(dtype, (-1, *predictor.shape))])
    outputs = Schema(
        [ColSpec("string", "predicted")] + [ColSpec("double", f"p({name})") for name in predictor.class_names]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(split_dir: Path, predictor: served.Predictor) -> Any:
    """Two raw test rows of the model's split (preprocess keeps them), as a user sends them."""
    for name in (served.RAW_TEST_TABLE, served.RAW_TEST_ARRAYS):
        if (split_dir / name).is_file():
            x, _ = served.read_inputs(split_dir / name, predictor)
            if predictor.is_table:
                columns = predictor.columns["numeric"] + predictor.columns["categorical"]
                return x[columns].head(2)
            return np.asarray(x[:2])
    return None


def log_model(seed_dir: Path, split_dir: Path, pip_requirements: list[str], model: Any = None) -> None:
    """Log the model folder `seed_dir` as the active run's MLflow model `model`; `split_dir`:
    the data split it was trained on, for the input example; `model`: the Keras model in memory
    (None: read from the folder)."""
    from mlflow.models import Model

    predictor = served.Predictor.load(seed_dir, model)
    with tempfile.TemporaryDirectory() as tmp:
        # Only what the predictor reads, not the run's history or timing.
        bundle = Path(tmp) / "model"
        bundle.mkdir()
        for name in (served.MODEL_FILE, served.PREPROCESSING, served.DATASET):
            shutil.copy(seed_dir / name, bundle / name)
        with _quiet():
            Model.log(
                artifact_path=None,
                name="model",
                flavor=mlflow.pyfunc,
                python_model=str(ENTRY),  # models from code: no pickle
                artifacts={ARTIFACT: str(bundle)},
                code_paths=[str(PACKAGE)],
                signature=signature(predictor),
                input_example=input_example(split_dir, predictor),
                metadata={"annlab_inputs": predictor.expected()},
                pip_requirements=pip_requirements,
            )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """MLflow's chatter while it logs (progress bars over local copies, a note on type hints,
    "Validating input example") would repeat for every run of a grid."""
    import logging
    import os
    import warnings

    logger = logging.getLogger("mlflow.pyfunc")
    level = logger.level
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*type hints.*")
            yield
    finally:
        logger.setLevel(level)
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous
