"""Stage `train@<optimizer>-<activation>`: train one grid cell and log it as an MLflow run."""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any

from annlab import cli, io
from annlab.metrics import one_hot
from annlab.params import Params, load_params

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]


def data_digest(data_dir: Path) -> str:
    """SHA-256 of the processed arrays and their description (the files are byte-reproducible)."""
    h = hashlib.sha256()
    for path in sorted(data_dir.iterdir()):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def history_csv(history: dict[str, list[float]]) -> str:
    """Keras' per-epoch history as CSV, one row per epoch, epochs counted from 1."""
    rows = [",".join(HISTORY_COLUMNS)]
    for i in range(len(history["loss"])):
        rows.append(",".join([str(i + 1)] + [repr(float(history[c][i])) for c in HISTORY_COLUMNS[1:]]))
    return "\n".join(rows) + "\n"


def cell_params(params: Params, optimizer: str, activation: str) -> dict[str, Any]:
    """What is logged as the run's params: the cell's effective params plus its coordinates.

    Left out: the grid lists (they say which cells exist, not how this one trains) and the
    other optimizers' hyperparameters (the cell does not depend on them, and DVC does not
    rerun it when they change).
    """
    own = f"optimizers.{optimizer}."
    flat = {
        k: v
        for k, v in params.for_cell(optimizer, activation).flat().items()
        if not k.startswith("grid.") and (k.startswith(own) or not k.startswith("optimizers."))
    }
    return {**flat, "optimizer": optimizer, "activation": activation}


def main(argv: list[str] | None = None) -> None:
    """Train the cell, save model and history, log everything to MLflow."""
    p = cli.parser(__doc__)
    p.add_argument("--optimizer", required=True)
    p.add_argument("--activation", required=True)
    p.add_argument("--data", type=Path, required=True, help="preprocess's output folder")
    p.add_argument("--model-dir", type=Path, required=True, help="folder for the model and meta")
    p.add_argument("--history", type=Path, required=True, help="per-epoch history CSV")
    args = p.parse_args(argv)
    base = load_params(args.params)
    params = base.for_cell(args.optimizer, args.activation)
    cell = f"{args.optimizer}-{args.activation}"

    # Heavy imports only once the params are known to be good.
    import keras
    import mlflow

    from annlab import model as annmodel
    from annlab import tracking

    annmodel.seed_everything(params.seed)
    info = io.read_json(args.data / "dataset.json")
    n_classes = len(info["class_names"])
    x_train, y_train = io.load_array(args.data, "x_train"), io.load_array(args.data, "y_train")
    x_val, y_val = io.load_array(args.data, "x_val"), io.load_array(args.data, "y_val")
    digest = data_digest(args.data)
    logged_params = cell_params(base, args.optimizer, args.activation)
    key = tracking.run_key(cell, logged_params, digest)

    exp_id = tracking.experiment_id(params.mlflow.experiment)
    tags = {
        **tracking.stage_tag(f"train@{cell}"),
        tracking.DATASET_TAG: info["dataset"],
        "mlflow.source.git.commit": tracking.git_commit(),
        "annlab.data_digest": digest,
    }

    class EpochLogger(keras.callbacks.Callback):
        """Log each epoch's metrics as it ends (step = epoch, from 1), so the UI shows progress."""

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            mlflow.log_metrics({k: float(v) for k, v in (logs or {}).items()}, step=epoch + 1)

    with tracking.start_cell_run(exp_id, key, cell, tags):
        mlflow.log_params(logged_params)
        mlflow.log_input(
            mlflow.data.from_numpy(x_train, targets=y_train, name=f"{info['dataset']}-train"),
            context="training",
        )
        mlflow.log_input(
            mlflow.data.from_numpy(x_val, targets=y_val, name=f"{info['dataset']}-val"),
            context="validation",
        )
        model = annmodel.compiled_model(params, x_train.shape[1], n_classes)
        started = time.perf_counter()
        fit = model.fit(
            x_train,
            one_hot(y_train, n_classes),
            validation_data=(x_val, one_hot(y_val, n_classes)),
            epochs=params.train.epochs,
            batch_size=params.train.batch_size,
            shuffle=True,
            verbose=1 if sys.stdout.isatty() else 2,
            callbacks=[EpochLogger()],
        )
        train_seconds = time.perf_counter() - started
        mlflow.log_metric("train_seconds", train_seconds)

        meta = {
            "cell": cell,
            "optimizer": args.optimizer,
            "activation": args.activation,
            "loss": params.train.loss,
            "dataset": info["dataset"],
            "model": f"{params.model.type} {'-'.join(map(str, params.model.hidden_units))}",
            "run_key": key,
            "data_digest": digest,
            "epochs_run": len(fit.history["loss"]),
        }
        with io.atomic_path(args.model_dir) as tmp:
            tmp.mkdir()
            model.save(tmp / "model.keras")
            io.write_json(tmp / "meta.json", meta)
            # Timings are not reproducible, so they stay out of the metrics files DVC compares.
            io.write_json(tmp / "timing.json", {"train_seconds": train_seconds})
        io.write_text(args.history, history_csv(fit.history))

        mlflow.log_artifact(str(args.history), artifact_path="history")
        summary: list[str] = []
        model.summary(print_fn=lambda line, **_: summary.append(line))
        mlflow.log_text("\n".join(summary), "model_summary.txt")
        mlflow.log_metric("n_params", model.count_params())
        signature = mlflow.models.infer_signature(x_val[:5], model.predict(x_val[:5], verbose=0))
        mlflow.keras.log_model(
            model,
            name="model",
            signature=signature,
            pip_requirements=tracking.pip_requirements(),
        )
    print(f"train: {cell}: val_accuracy={fit.history['val_accuracy'][-1]:.4f} in {train_seconds:.1f}s")


if __name__ == "__main__":
    cli.run(main)
