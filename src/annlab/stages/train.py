"""Stage `train@<model>-<optimizer>-<activation>`: train one grid cell, log each run in MLflow.

With a tuning list for the cell's optimizer (`tuning.learning_rates`), each value is first
trained on the tuning seed (the trials); the one with the best validation metric at its
checkpoint is chosen (`annlab.tuning`), and every other seed trains at it. The tuning
seed's run at the chosen rate is that seed's run. Without one, every seed trains once at
`optimizers.<name>.learning_rate`."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from annlab import io, runtime
from annlab import tuning as tune
from annlab.params import Activation, ModelType, OptimizerName, Params, Tuning, cell_name, load_params
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
    """What every run of one cell shares while it trains: the cell, its data, its MLflow place."""

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
    tuning: Tuning | None  # None: one-shot at the optimizer's own learning rate
    outs: dict[str, Path]  # where dvc.yaml puts the cell's outputs: "models", "history", "tuning"

    @property
    def cell(self) -> str:
        """The cell's name, e.g. `ann-adam-relu`."""
        return cell_name(self.model_type, self.optimizer, self.activation)

    @property
    def default_learning_rate(self) -> float:
        """The optimizer's own learning rate (`optimizers.<name>.learning_rate`)."""
        return float(getattr(self.base.optimizers, self.optimizer).learning_rate)


@dataclass
class SeedResult:
    """One run's training: its line for the log, final validation accuracy, time, model and
    checkpoint, and its MLflow run (None when MLflow is out of reach)."""

    line: str
    final_val_accuracy: float | None  # None when it diverged
    seconds: float
    model: Any  # keras.Model, reused by the next run
    checkpoint: tune.Checkpoint
    run_id: str | None


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
        link, exp_id, parent_id, tags, base.tuning_for(args.optimizer),
        {"models": args.model_dir, "history": args.history, "tuning": args.tuning},
    )  # fmt: skip


def train_seed(
    run: CellRun,
    seed: int,
    seed_dir: Path,
    history_path: Path,
    previous: Any,
    learning_rate: float | None = None,
    role: str = "final",
) -> SeedResult:
    """Train one run of the cell (seed `seed`, at `learning_rate`; None: the optimizer's own) in
    its own MLflow run tagged `role` ("trial" or "final") and save it; `previous`: the last run's
    model (None for the first), whose compiled step the new one reuses."""
    from annlab.track import tracking
    from annlab.track.epochs import EpochLogger
    from annlab.train import model as annmodel

    rate = run.default_learning_rate if learning_rate is None else learning_rate
    params, base = (
        run.params.with_learning_rate(run.optimizer, rate),
        run.base.with_learning_rate(run.optimizer, rate),
    )
    n_classes = len(run.info["class_names"])
    split = io.split_dir(run.data, seed)  # the seed's own split, with data.split_per_seed
    x_train, y_train = io.load_array(split, "x_train"), io.load_array(split, "y_train")
    x_val, y_val = io.load_array(split, "x_val"), io.load_array(split, "y_val")
    annmodel.seed_everything(seed)
    logged_params = tracking.cell_params(base, run.model_type, run.optimizer, run.activation, seed)
    key = tracking.cell_key(run.cell, logged_params, run.digest)
    grid_id = run.tags[tracking.GRID_TAG]
    name = tracking.cell_run_name(run.cell, seed, run.base.seeds)
    if role == "trial":
        name = f"{run.cell} lr={rate:g}"
    run_tags = {**run.tags, tracking.CELL_KEY_TAG: key, **tracking.role_tags(role, rate)}
    link, run_key = run.link, tracking.run_key(key, grid_id)
    with tracking.start_cell_run(link, run.exp_id, run_key, name, run.parent_id, run_tags):
        run_id = link.call(tracking.active_run_id)
        splits = {"training": (x_train, y_train), "validation": (x_val, y_val)}
        link.call(tracking.log_cell_inputs, logged_params, grid_id, splits, run.info["dataset"])
        # A table's width is its split's own (one-hot over the categories its training rows hold).
        shape = tuple(run.info["input_shape"] or x_train.shape[1:])
        fresh = annmodel.compiled_model(params, shape, n_classes, run.speed, len(x_train))
        model = annmodel.reuse(previous, fresh, run.speed)
        started = time.perf_counter()
        logger = EpochLogger(link)
        callbacks = [logger]
        if params.train.checkpoint == "best":
            callbacks.append(annmodel.KeepBest(run.base.select_on))
        try:
            fitted = annmodel.fit(
                model,
                (x_train, one_hot(y_train, n_classes)),
                (x_val, one_hot(y_val, n_classes)),
                epochs=params.train.epochs,
                batch_size=params.train.batch_size,
                callbacks=callbacks,
                verbose=1 if sys.stdout.isatty() else 2,
                speed=run.speed,
            )
        except BaseException:
            logger.flush()  # an interrupted run keeps its curves up to the last epoch
            raise
        seconds = time.perf_counter() - started
        history = {c: fitted[c] for c in HISTORY_COLUMNS[1:]}
        chosen = tune.checkpoint(history, params.train.checkpoint, run.base.select_on)
        saved = SavedRun(seed, rate, key, history, seconds, chosen)
        diverged_at = write_seed(run, saved, seed_dir, history_path, split, model)
        # What the run holds is what was just written: `annlab sync` logs the same from the files.
        link.call(tracking.log_cell_outputs, seed_dir, history_path, split, model, role == "final")
    what = f"{name}" if role == "trial" else f"{name} lr={rate:g}"
    if not chosen.usable:
        line = f"train: {what}: diverged at epoch {diverged_at} (loss no longer finite); stopped"
        return SeedResult(line, None, seconds, model, chosen, run_id)
    final = chosen.val_accuracy  # the weights kept: the best epoch's, or the last one's
    at = f" (checkpoint: epoch {chosen.epoch})" if params.train.checkpoint == "best" else ""
    line = f"train: {what}: val_accuracy={final:.4f}{at} in {seconds:.1f}s"
    return SeedResult(line, final, seconds, model, chosen, run_id)


@dataclass(frozen=True)
class SavedRun:
    """What one trained run writes beside its model."""

    seed: int
    learning_rate: float
    key: str
    history: dict[str, list[float]]
    seconds: float
    checkpoint: tune.Checkpoint


def write_seed(
    run: CellRun, saved: SavedRun, seed_dir: Path, history_path: Path, split: Path, model: Any
) -> int | None:
    """Save a trained run: model, meta, summary, timing and history; returns the epoch at which
    it diverged (None if it did not)."""
    history = saved.history
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
        "seed": saved.seed,
        "model_type": run.model_type,
        "optimizer": run.optimizer,
        "activation": run.activation,
        "loss": run.params.train.loss,
        "dataset": run.info["dataset"],
        "model": run.params.model.label,
        "n_params": model.count_params(),
        "cell_key": saved.key,
        "data_digest": run.digest,
        "epochs_run": epochs_run,
        # A run is diverged when the weights it is evaluated with are not finite: with
        # train.checkpoint best, a run that diverged late keeps its best epoch.
        "diverged": not saved.checkpoint.usable,
        "diverged_epoch": diverged_at,
        "best_val_accuracy": best_val,
        "best_epoch": best_at,
    }
    # Where every choice is made: the rate trained at, and the checkpoint's validation metrics.
    meta |= {
        "learning_rate": saved.learning_rate,
        "tuned": run.tuning is not None,
        "checkpoint": run.params.train.checkpoint,
        "checkpoint_epoch": saved.checkpoint.epoch,
        "checkpoint_val_accuracy": saved.checkpoint.val_accuracy,
        "checkpoint_val_loss": saved.checkpoint.val_loss,
    }
    io.write_json(seed_dir / "meta.json", meta)
    io.write_text(seed_dir / "model_summary.txt", summary_text(model))
    # Timings are not reproducible, so they stay out of the files DVC compares.
    timing = {"train_seconds": saved.seconds, "seconds_per_epoch": saved.seconds / epochs_run}
    io.write_json(seed_dir / "timing.json", timing)
    io.write_text(history_path, history_csv(history))
    return diverged_at


def trial_name(learning_rate: float) -> str:
    """A trial's file name in reports/tuning/<cell>/, e.g. `lr-0.003.csv`."""
    return f"lr-{learning_rate!r}.csv"


def tune_cell(run: CellRun, model_dir: Path, history_dir: Path, tuning_dir: Path) -> list[SeedResult]:
    """Train each learning rate of the cell's list on the tuning seed, choose one on validation,
    keep the chosen trial as the tuning seed's run and train every other seed at it."""
    from annlab.track import tracking
    from annlab.track import trials as earlier

    assert run.tuning is not None
    seeds, rates = run.base.seeds, run.tuning.learning_rates
    split = io.split_dir(run.data, run.tuning.seed)
    logged = tracking.cell_params(run.base, run.model_type, run.optimizer, run.activation, run.tuning.seed)
    key = earlier.tuning_key(run.cell, logged, split, run.info)
    found = earlier.previous(f"train@{run.cell}", run.outs["tuning"], key) if run.outs["tuning"] else None
    if found is not None:
        best, rate = reuse_trials(run, found, model_dir, history_dir, tuning_dir)
        return [best, *train_rest(run, rate, model_dir, history_dir, None)]
    trials: list[SeedResult] = []
    for n, rate in enumerate(rates, start=1):
        print(f"train: {run.cell} trial lr={rate:g} ({n}/{len(rates)}) on seed {run.tuning.seed}", flush=True)
        previous = trials[-1].model if trials else None
        trial_dir = model_dir / f".trial-{n}"
        trials.append(
            train_seed(
                run, run.tuning.seed, trial_dir, tuning_dir / trial_name(rate), previous, rate, "trial"
            )
        )
        print(trials[-1].line)
    judged = [tune.Trial(rate, t.checkpoint) for rate, t in zip(rates, trials, strict=True)]
    chosen = tune.choose(judged, run.tuning.select_on)
    at = rates.index(chosen.learning_rate)
    seed_name = io.seed_name(run.tuning.seed)
    (model_dir / f".trial-{at + 1}").rename(model_dir / seed_name)
    for n in range(1, len(rates) + 1):
        shutil.rmtree(model_dir / f".trial-{n}", ignore_errors=True)
    shutil.copy(tuning_dir / trial_name(chosen.learning_rate), history_dir / f"{seed_name}.csv")
    choice = {
        "cell": run.cell,
        "optimizer": run.optimizer,
        "tuned": True,
        "learning_rate": chosen.learning_rate,
        "default_learning_rate": run.default_learning_rate,
        "select_on": run.tuning.select_on,
        "checkpoint": run.params.train.checkpoint,
        "tuning_seed": run.tuning.seed,
        "edge": tune.edge(chosen.learning_rate, rates),
        "trials": [{**t.as_dict(), "file": trial_name(t.learning_rate)} for t in judged],
        earlier.KEY: key,  # a later run of the cell with more seeds takes these trials (track/trials.py)
    }
    io.write_text(tuning_dir / "choice.json", json.dumps(choice, indent=2) + "\n")
    print(f"train: {run.cell}: chose lr={chosen.learning_rate:g} on {run.tuning.select_on}", flush=True)
    if not chosen.checkpoint.usable:
        print(f"train: {run.cell}: every learning rate tried diverged; add smaller values", flush=True)
    best = trials[at]
    if best.run_id is not None:  # the chosen trial is the tuning seed's run
        seed_dir = model_dir / seed_name
        run.link.call(
            tracking.promote_trial,
            best.run_id,
            chosen.learning_rate,
            seed_dir,
            history_dir / f"{seed_name}.csv",
            split,
            tracking.cell_run_name(run.cell, run.tuning.seed, seeds),
        )  # the model from the saved folder: the trials after it trained the same Keras model
    return [best, *train_rest(run, chosen.learning_rate, model_dir, history_dir, trials[-1].model)]


def train_rest(
    run: CellRun, rate: float, model_dir: Path, history_dir: Path, previous: Any
) -> list[SeedResult]:
    """Train every seed but the tuning seed at the chosen learning rate; `previous`: the last
    model trained (None: none yet)."""
    assert run.tuning is not None
    seeds, results = run.base.seeds, []
    for n, seed in enumerate([s for s in seeds if s != run.tuning.seed], start=2):
        print(f"train: {run.cell} seed {seed} ({n}/{len(seeds)}) at lr={rate:g}", flush=True)
        name = io.seed_name(seed)
        results.append(train_seed(run, seed, model_dir / name, history_dir / f"{name}.csv", previous, rate))
        previous = results[-1].model
        print(results[-1].line)
    return results


def reuse_trials(
    run: CellRun, found: dict[Path, dict[str, Path]], model_dir: Path, history_dir: Path, tuning_dir: Path
) -> tuple[SeedResult, float]:
    """Take the cell's trials and its tuning seed's run from its previous outputs in DVC's cache
    (`track.trials.previous`): the files as they were, but for the run's keys, which name the
    data of this grid. Log that run to MLflow as this grid's; returns it and the chosen rate."""
    from annlab.track import tracking

    assert run.tuning is not None
    seed, name = run.tuning.seed, io.seed_name(run.tuning.seed)
    for relpath, cached in found[Path(run.outs["tuning"])].items():
        shutil.copyfile(cached, tuning_dir / relpath)
    choice = io.read_json(tuning_dir / "choice.json")
    rate = float(choice["learning_rate"])
    seed_dir = model_dir / name
    for relpath, cached in found[Path(run.outs["models"])].items():
        if relpath.startswith(f"{name}/"):
            (model_dir / relpath).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cached, model_dir / relpath)
    shutil.copyfile(found[Path(run.outs["history"])][f"{name}.csv"], history_dir / f"{name}.csv")
    shutil.copy(run.data / "dataset.json", seed_dir / "dataset.json")  # this grid's, as a new run's
    logged = tracking.cell_params(
        run.base.with_learning_rate(run.optimizer, rate), run.model_type, run.optimizer, run.activation, seed
    )
    meta = io.read_json(seed_dir / "meta.json")
    meta |= {"cell_key": tracking.cell_key(run.cell, logged, run.digest), "data_digest": run.digest}
    io.write_json(seed_dir / "meta.json", meta)
    seconds = float(io.read_json(seed_dir / "timing.json")["train_seconds"])
    print(
        f"train: {run.cell}: the {len(choice['trials'])} trials on seed {seed} are the previous run's"
        f" (same params, split and code), not trained again: lr={rate:g} on {choice['select_on']}",
        flush=True,
    )
    run_id = run.link.call(
        tracking.log_saved_run,
        run.exp_id,
        run.parent_id,
        {**run.tags, tracking.CELL_KEY_TAG: meta["cell_key"], **tracking.role_tags("final", rate)},
        tracking.run_key(meta["cell_key"], run.tags[tracking.GRID_TAG]),
        tracking.cell_run_name(run.cell, seed, run.base.seeds),
        logged,
        seed_dir,
        history_dir / f"{name}.csv",
        io.split_dir(run.data, seed),
        run.info["dataset"],
    )
    point = tune.Checkpoint(
        meta["checkpoint_epoch"], meta["checkpoint_val_accuracy"], meta["checkpoint_val_loss"]
    )
    final = meta["checkpoint_val_accuracy"] if not meta["diverged"] else None
    line = f"train: {tracking.cell_run_name(run.cell, seed, run.base.seeds)} lr={rate:g}: reused"
    return SeedResult(line, final, seconds, None, point, run_id), rate


def one_shot(run: CellRun, model_dir: Path, history_dir: Path, tuning_dir: Path) -> list[SeedResult]:
    """Train every seed once at the optimizer's own learning rate (no tuning list)."""
    results: list[SeedResult] = []
    for n, seed in enumerate(run.base.seeds, start=1):
        print(f"train: {run.cell} seed {seed} ({n}/{len(run.base.seeds)})", flush=True)
        name = io.seed_name(seed)
        previous = results[-1].model if results else None
        results.append(train_seed(run, seed, model_dir / name, history_dir / f"{name}.csv", previous))
        print(results[-1].line)
    choice = {
        "cell": run.cell,
        "optimizer": run.optimizer,
        "tuned": False,
        "learning_rate": run.default_learning_rate,
        "default_learning_rate": run.default_learning_rate,
        "checkpoint": run.params.train.checkpoint,
        "trials": [],
    }
    io.write_text(tuning_dir / "choice.json", json.dumps(choice, indent=2) + "\n")
    return results


def main(argv: list[str] | None = None) -> dict[str, float | None]:
    """Train the cell (its trials, then every seed); save models and histories; log each run.

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
    p.add_argument(
        "--tuning", type=Path, help="folder for the learning-rate trials (their histories, choice.json)"
    )
    args = p.parse_args(argv)
    base = load_params(args.params)
    speed = Speed.from_env()

    # Heavy imports only once the params are known to be good.
    from annlab.track import tracking
    from annlab.train import model as annmodel

    annmodel.configure(speed)
    run = open_cell(args, base, speed)
    # One atomic write for all runs: a failure leaves the previous outputs, never a partial cell.
    with contextlib.ExitStack() as outputs:
        model_dir = outputs.enter_context(io.atomic_path(args.model_dir))
        history_dir = outputs.enter_context(io.atomic_path(args.history))
        if args.tuning:
            tuning_dir = outputs.enter_context(io.atomic_path(args.tuning))
        else:  # the trials' histories are not kept
            tuning_dir = Path(outputs.enter_context(tempfile.TemporaryDirectory())) / "trials"
        for folder in (model_dir, history_dir, tuning_dir):
            folder.mkdir()
        train_all = tune_cell if run.tuning is not None else one_shot
        results = train_all(run, model_dir, history_dir, tuning_dir)
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
