"""Stage `train@<model>-<optimizer>-<activation>`: train one grid cell, log each seed as an MLflow run."""

from __future__ import annotations

import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, get_args

from annlab import io, runtime
from annlab.params import Activation, ModelType, OptimizerName, cell_name, load_params
from annlab.report.metrics import one_hot
from annlab.train.speed import Speed

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]


def history_csv(history: dict[str, list[float]]) -> str:
    """Keras' per-epoch history as CSV, one row per epoch, epochs counted from 1."""
    rows = [",".join(HISTORY_COLUMNS)]
    for i in range(len(history["loss"])):
        rows.append(",".join([str(i + 1)] + [repr(float(history[c][i])) for c in HISTORY_COLUMNS[1:]]))
    return "\n".join(rows) + "\n"


def diverged_epoch(history: dict[str, list[float]]) -> int | None:
    """The first epoch (from 1) whose loss or metrics are NaN or infinite, if any."""
    for i in range(len(history["loss"])):
        if not all(math.isfinite(history[c][i]) for c in HISTORY_COLUMNS[1:]):
            return i + 1
    return None


def best_epoch(history: dict[str, list[float]]) -> tuple[float | None, int | None]:
    """The best validation accuracy and the first epoch (from 1) that reached it."""
    finite = [(v, i + 1) for i, v in enumerate(history["val_accuracy"]) if math.isfinite(v)]
    if not finite:
        return None, None
    best = max(v for v, _ in finite)
    return best, next(epoch for v, epoch in finite if v == best)


def summary_text(model: Any) -> str:
    """Keras' model summary as text."""
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, float | None]:
    """Train the cell once per seed; save models and histories; log each seed as an MLflow run.

    Returns what a warm worker reports of the cell: its final validation accuracy (the mean
    over the seeds that did not diverge; None if all did) and its training seconds.
    """
    p = runtime.parser(__doc__)
    p.add_argument("--model", required=True, choices=get_args(ModelType))
    p.add_argument("--optimizer", required=True, choices=get_args(OptimizerName))
    p.add_argument("--activation", required=True, choices=get_args(Activation))
    p.add_argument("--data", type=Path, required=True, help="preprocess's output folder")
    p.add_argument("--model-dir", type=Path, required=True, help="folder for one model per seed")
    p.add_argument("--history", type=Path, required=True, help="folder for one history CSV per seed")
    args = p.parse_args(argv)
    base = load_params(args.params)
    params = base.for_cell(args.model, args.optimizer, args.activation)
    cell = cell_name(args.model, args.optimizer, args.activation)
    speed = Speed.from_env()

    # Heavy imports only once the params are known to be good.
    import keras
    import mlflow
    from mlflow.entities import Metric

    from annlab.track import tracking
    from annlab.train import model as annmodel

    annmodel.configure(speed)

    info = io.read_json(args.data / "dataset.json")
    n_classes = len(info["class_names"])
    digest = io.data_digest(args.data)
    grid_id = base.grid_id()

    link = tracking.Link()
    exp_id = parent_id = ""
    if link.up:
        exp_id = tracking.experiment_id(params.mlflow.experiment)  # a server down now stops the stage
        parent_id = link.call(
            tracking.grid_run, exp_id, grid_id, tracking.grid_name(base), tracking.grid_tags(base)
        )
    else:
        print(
            f"train: {tracking.OFFLINE_ENV} is set: nothing is logged to MLflow;"
            " `annlab sync` uploads the runs later"
        )
    tags = {
        **tracking.stage_tag(f"train@{cell}"),
        **speed.tags(),
        tracking.DATASET_TAG: info["dataset"],
        tracking.CELL_TAG: cell,
        tracking.GRID_TAG: grid_id,
        "mlflow.source.git.commit": tracking.git_commit(),
        "annlab.data_digest": digest,
    }

    class EpochLogger(keras.callbacks.Callback):
        """Log each epoch's metrics (step = epoch, from 1) so the UI shows progress, at most
        once a second: a write to the store costs about as much as a digits epoch. Stop at the
        first epoch whose loss is no longer finite (the cell has diverged)."""

        def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
            self.pending: list[Metric] = []
            self.flushed = time.monotonic()
            self.steps_done = 0

        def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
            self.steps_done = batch + 1  # Keras passes the last batch of the step

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            if runtime.stop_requested() and self.steps_done < (self.params.get("steps") or 0):
                return  # a signal cut this epoch short: its metrics are not an epoch's (run KILLED)
            logs = {k: float(v) for k, v in (logs or {}).items()}
            now_ms = int(time.time() * 1000)
            self.pending += [Metric(k, v, now_ms, epoch + 1) for k, v in logs.items()]
            if time.monotonic() - self.flushed >= 1.0:
                self.flush()
            if not all(math.isfinite(v) for v in logs.values()):
                self.model.stop_training = True

        def on_train_end(self, logs: dict[str, float] | None = None) -> None:
            self.flush()

        def flush(self) -> None:
            if self.pending:
                pending = self.pending
                link.call(lambda: tracking.log_metric_points(mlflow.active_run().info.run_id, pending))
            self.pending, self.flushed = [], time.monotonic()

    finals: list[float] = []
    train_seconds = 0.0
    models: list[keras.Model] = []  # the last seed's, trained again from the next seed's start

    def train_seed(seed: int, seed_dir: Path, history_path: Path) -> str:
        """Train one seed of the cell in its own MLflow run, save it; return a one-line summary."""
        nonlocal train_seconds
        split = io.split_dir(args.data, seed)  # the seed's own split, with data.split_per_seed
        x_train, y_train = io.load_array(split, "x_train"), io.load_array(split, "y_train")
        x_val, y_val = io.load_array(split, "x_val"), io.load_array(split, "y_val")
        annmodel.seed_everything(seed)
        logged_params = tracking.cell_params(base, args.model, args.optimizer, args.activation, seed)
        key = tracking.cell_key(cell, logged_params, digest)
        name = tracking.cell_run_name(cell, seed, base.seeds)
        run_tags = {**tags, tracking.CELL_KEY_TAG: key}
        with tracking.start_cell_run(link, exp_id, tracking.run_key(key, grid_id), name, parent_id, run_tags):
            splits = {"training": (x_train, y_train), "validation": (x_val, y_val)}
            link.call(tracking.log_cell_inputs, logged_params, grid_id, splits, info["dataset"])
            # A table's width is its split's own (one-hot over the categories its training rows hold).
            shape = tuple(info["input_shape"] or x_train.shape[1:])
            fresh = annmodel.compiled_model(params, shape, n_classes, speed, len(x_train))
            model = annmodel.reuse(models[-1] if models else None, fresh, speed)
            models[:] = [model]
            started = time.perf_counter()
            logger = EpochLogger()
            try:
                fitted = annmodel.fit(
                    model,
                    (x_train, one_hot(y_train, n_classes)),
                    (x_val, one_hot(y_val, n_classes)),
                    epochs=params.train.epochs,
                    batch_size=params.train.batch_size,
                    callbacks=[logger],
                    verbose=1 if sys.stdout.isatty() else 2,
                    speed=speed,
                )
            except BaseException:
                logger.flush()  # an interrupted run keeps its curves up to the last epoch
                raise
            seconds = time.perf_counter() - started
            train_seconds += seconds
            history = {c: fitted[c] for c in HISTORY_COLUMNS[1:]}
            diverged_at = diverged_epoch(history)
            best_val, best_at = best_epoch(history)
            epochs_run = len(history["loss"])

            seed_dir.mkdir()
            model.save(seed_dir / "model.keras")
            # With the preprocessing of its split and what the data is, the folder is a model in
            # use: raw inputs in, class names out (`annlab predict`, the logged MLflow model).
            shutil.copy(split / "preprocessing.json", seed_dir / "preprocessing.json")
            shutil.copy(args.data / "dataset.json", seed_dir / "dataset.json")
            meta = {
                "cell": cell,
                "seed": seed,
                "model_type": args.model,
                "optimizer": args.optimizer,
                "activation": args.activation,
                "loss": params.train.loss,
                "dataset": info["dataset"],
                "model": params.model.label,
                "n_params": model.count_params(),
                "cell_key": key,
                "data_digest": digest,
                "epochs_run": epochs_run,
                "diverged": diverged_at is not None,
                "diverged_epoch": diverged_at,
                "best_val_accuracy": best_val,
                "best_epoch": best_at,
            }
            io.write_json(seed_dir / "meta.json", meta)
            io.write_text(seed_dir / "model_summary.txt", summary_text(model))
            # Timings are not reproducible, so they stay out of the files DVC compares.
            timing = {"train_seconds": seconds, "seconds_per_epoch": seconds / epochs_run}
            io.write_json(seed_dir / "timing.json", timing)
            io.write_text(history_path, history_csv(history))
            # What the run holds is what was just written: `annlab sync` logs the same from the files.
            link.call(tracking.log_cell_outputs, seed_dir, history_path, split, model)
        if diverged_at is not None:
            return f"train: {name}: diverged at epoch {diverged_at} (loss no longer finite); stopped"
        finals.append(history["val_accuracy"][-1])
        return f"train: {name}: val_accuracy={history['val_accuracy'][-1]:.4f} in {seconds:.1f}s"

    # One atomic write for all seeds: a failure leaves the previous outputs, never a partial cell.
    with io.atomic_path(args.model_dir) as model_dir, io.atomic_path(args.history) as history_dir:
        model_dir.mkdir()
        history_dir.mkdir()
        for n, seed in enumerate(base.seeds, start=1):
            print(f"train: {cell} seed {seed} ({n}/{len(base.seeds)})", flush=True)
            name = io.seed_name(seed)
            print(train_seed(seed, model_dir / name, history_dir / f"{name}.csv"))
    if link.lost and not tracking.offline():
        print(
            f"train: MLflow tracking server {link.lost}: the outputs are complete;"
            " `annlab sync` uploads the runs"
        )
    return {"val_accuracy": sum(finals) / len(finals) if finals else None, "train_seconds": train_seconds}


if __name__ == "__main__":
    runtime.run(main)
