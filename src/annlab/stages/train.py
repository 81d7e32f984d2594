"""Stage `train@<model>-<optimizer>-<activation>`: train one grid cell, log each seed as an MLflow run."""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from annlab import io, runtime
from annlab.params import Activation, ModelType, OptimizerName, Params, cell_name, load_params
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


@dataclass(frozen=True)
class CellRun:
    """What every seed of one cell shares while it trains: the cell, its data, its MLflow place."""

    base: Params  # params.yaml as it is (the grid)
    params: Params  # the cell's own (`Params.for_cell`)
    model_type: str
    optimizer: str
    activation: str
    data: Path
    info: dict[str, Any]  # preprocess's dataset.json
    digest: str
    speed: Speed
    link: Any  # tracking.Link
    exp_id: str
    parent_id: str
    tags: dict[str, str]

    @property
    def cell(self) -> str:
        """The cell's name, e.g. `ann-adam-relu`."""
        return cell_name(self.model_type, self.optimizer, self.activation)


@dataclass
class SeedResult:
    """One seed's training: its line for the log, final validation accuracy, time and model."""

    line: str
    final_val_accuracy: float | None  # None when it diverged
    seconds: float
    model: Any  # keras.Model, reused by the next seed


def open_cell(args: argparse.Namespace, base: Params, speed: Speed) -> CellRun:
    """The cell's shared state: its params and data, and its grid's parent run in MLflow."""
    from annlab.track import tracking

    params = base.for_cell(args.model, args.optimizer, args.activation)
    cell = cell_name(args.model, args.optimizer, args.activation)
    info = io.read_json(args.data / "dataset.json")
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
    return CellRun(
        base, params, args.model, args.optimizer, args.activation, args.data, info, digest, speed,
        link, exp_id, parent_id, tags,
    )  # fmt: skip


def train_seed(run: CellRun, seed: int, seed_dir: Path, history_path: Path, previous: Any) -> SeedResult:
    """Train one seed of the cell in its own MLflow run and save it; `previous`: the last seed's
    model (None for the first), whose compiled step the new one reuses."""
    from annlab.track import tracking
    from annlab.track.epochs import EpochLogger
    from annlab.train import model as annmodel

    n_classes = len(run.info["class_names"])
    split = io.split_dir(run.data, seed)  # the seed's own split, with data.split_per_seed
    x_train, y_train = io.load_array(split, "x_train"), io.load_array(split, "y_train")
    x_val, y_val = io.load_array(split, "x_val"), io.load_array(split, "y_val")
    annmodel.seed_everything(seed)
    logged_params = tracking.cell_params(run.base, run.model_type, run.optimizer, run.activation, seed)
    key = tracking.cell_key(run.cell, logged_params, run.digest)
    grid_id = run.tags[tracking.GRID_TAG]
    name = tracking.cell_run_name(run.cell, seed, run.base.seeds)
    run_tags = {**run.tags, tracking.CELL_KEY_TAG: key}
    link = run.link
    with tracking.start_cell_run(
        link, run.exp_id, tracking.run_key(key, grid_id), name, run.parent_id, run_tags
    ):
        splits = {"training": (x_train, y_train), "validation": (x_val, y_val)}
        link.call(tracking.log_cell_inputs, logged_params, grid_id, splits, run.info["dataset"])
        # A table's width is its split's own (one-hot over the categories its training rows hold).
        shape = tuple(run.info["input_shape"] or x_train.shape[1:])
        fresh = annmodel.compiled_model(run.params, shape, n_classes, run.speed, len(x_train))
        model = annmodel.reuse(previous, fresh, run.speed)
        started = time.perf_counter()
        logger = EpochLogger(link)
        try:
            fitted = annmodel.fit(
                model,
                (x_train, one_hot(y_train, n_classes)),
                (x_val, one_hot(y_val, n_classes)),
                epochs=run.params.train.epochs,
                batch_size=run.params.train.batch_size,
                callbacks=[logger],
                verbose=1 if sys.stdout.isatty() else 2,
                speed=run.speed,
            )
        except BaseException:
            logger.flush()  # an interrupted run keeps its curves up to the last epoch
            raise
        seconds = time.perf_counter() - started
        history = {c: fitted[c] for c in HISTORY_COLUMNS[1:]}
        diverged_at = write_seed(run, seed, seed_dir, history_path, split, model, key, history, seconds)
        # What the run holds is what was just written: `annlab sync` logs the same from the files.
        link.call(tracking.log_cell_outputs, seed_dir, history_path, split, model)
    if diverged_at is not None:
        line = f"train: {name}: diverged at epoch {diverged_at} (loss no longer finite); stopped"
        return SeedResult(line, None, seconds, model)
    final = history["val_accuracy"][-1]
    return SeedResult(f"train: {name}: val_accuracy={final:.4f} in {seconds:.1f}s", final, seconds, model)


def write_seed(
    run: CellRun,
    seed: int,
    seed_dir: Path,
    history_path: Path,
    split: Path,
    model: Any,
    key: str,
    history: dict[str, list[float]],
    seconds: float,
) -> int | None:
    """Save a trained seed: model, meta, summary, timing and history; returns the epoch at which
    it diverged (None if it did not)."""
    diverged_at = diverged_epoch(history)
    best_val, best_at = best_epoch(history)
    epochs_run = len(history["loss"])
    seed_dir.mkdir()
    model.save(seed_dir / "model.keras")
    # With the preprocessing of its split and what the data is, the folder is a model in
    # use: raw inputs in, class names out (`annlab predict`, the logged MLflow model).
    shutil.copy(split / "preprocessing.json", seed_dir / "preprocessing.json")
    shutil.copy(run.data / "dataset.json", seed_dir / "dataset.json")
    meta = {
        "cell": run.cell,
        "seed": seed,
        "model_type": run.model_type,
        "optimizer": run.optimizer,
        "activation": run.activation,
        "loss": run.params.train.loss,
        "dataset": run.info["dataset"],
        "model": run.params.model.label,
        "n_params": model.count_params(),
        "cell_key": key,
        "data_digest": run.digest,
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
    return diverged_at


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
    speed = Speed.from_env()

    # Heavy imports only once the params are known to be good.
    from annlab.track import tracking
    from annlab.train import model as annmodel

    annmodel.configure(speed)
    run = open_cell(args, base, speed)
    results: list[SeedResult] = []
    # One atomic write for all seeds: a failure leaves the previous outputs, never a partial cell.
    with io.atomic_path(args.model_dir) as model_dir, io.atomic_path(args.history) as history_dir:
        model_dir.mkdir()
        history_dir.mkdir()
        for n, seed in enumerate(base.seeds, start=1):
            print(f"train: {run.cell} seed {seed} ({n}/{len(base.seeds)})", flush=True)
            name = io.seed_name(seed)
            previous = results[-1].model if results else None
            results.append(train_seed(run, seed, model_dir / name, history_dir / f"{name}.csv", previous))
            print(results[-1].line)
    if run.link.lost and not tracking.offline():
        print(
            f"train: MLflow tracking server {run.link.lost}: the outputs are complete;"
            " `annlab sync` uploads the runs"
        )
    finals = [r.final_val_accuracy for r in results if r.final_val_accuracy is not None]
    return {
        "val_accuracy": sum(finals) / len(finals) if finals else None,
        "train_seconds": sum(r.seconds for r in results),
    }


if __name__ == "__main__":
    runtime.run(main)
