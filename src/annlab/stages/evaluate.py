"""Stage `evaluate@<optimizer>-<activation>`: test-set metrics of one cell, into DVC and its MLflow run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from annlab import cli, io, metrics
from annlab.params import load_params


def predictions_csv(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> str:
    """One row per test sample, in the shape `dvc plots` wants for a confusion matrix."""
    rows = ["actual,predicted"]
    rows += [f"{class_names[t]},{class_names[p]}" for t, p in zip(y_true, y_pred, strict=True)]
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Predict the test split, write metrics and the per-class report, log them to the cell's run."""
    p = cli.parser(__doc__)
    p.add_argument("--model-dir", type=Path, required=True, help="train's output folder")
    p.add_argument("--data", type=Path, required=True, help="preprocess's output folder")
    p.add_argument("--metrics", type=Path, required=True, help="scalar metrics JSON (dvc metrics)")
    p.add_argument("--report", type=Path, required=True, help="per-class report JSON")
    p.add_argument("--predictions", type=Path, required=True, help="actual/predicted CSV")
    args = p.parse_args(argv)
    params = load_params(args.params)

    import keras
    import mlflow

    from annlab import tracking

    meta = io.read_json(args.model_dir / "meta.json")
    info = io.read_json(args.data / "dataset.json")
    x_test, y_test = io.load_array(args.data, "x_test"), io.load_array(args.data, "y_test")
    model = keras.saving.load_model(args.model_dir / "model.keras", safe_mode=True)
    probs = model.predict(x_test, verbose=0)
    scalars, report = metrics.evaluate(y_test, probs, meta["loss"], info["class_names"])

    io.write_json(args.metrics, scalars)
    io.write_json(args.report, report)
    io.write_text(args.predictions, predictions_csv(y_test, probs.argmax(axis=1), info["class_names"]))

    exp_id = tracking.experiment_id(params.mlflow.experiment)
    tags = {
        **tracking.stage_tag(f"evaluate@{meta['cell']}"),
        tracking.DATASET_TAG: info["dataset"],
    }
    with tracking.resume_cell_run(exp_id, meta["run_key"], meta["cell"], tags):
        mlflow.log_metrics({k: float(v) for k, v in scalars.items()})
        mlflow.log_input(
            mlflow.data.from_numpy(x_test, targets=y_test, name=f"{info['dataset']}-test"),
            context="testing",
        )
        mlflow.log_artifact(str(args.report), artifact_path="evaluation")
    print(f"evaluate: {meta['cell']}: " + " ".join(f"{k}={v:.4f}" for k, v in scalars.items()))


if __name__ == "__main__":
    cli.run(main)
