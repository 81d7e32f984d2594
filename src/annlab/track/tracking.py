"""MLflow plumbing: which store, which experiment, and the one run that belongs to a cell.

Stages find a cell's run by a deterministic key (tag `annlab.key`), never by a run id
written into DVC-tracked files, so reruns with the same inputs replace rather than pile up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient

from annlab import io
from annlab.errors import Interrupted, UserError
from annlab.params import Params, cell_keys, flatten
from annlab.track.store import (
    HTTP_DEFAULTS,
    OFFLINE_ENV,
    git_commit,
    is_server,
    offline,
    redact,
    sqlite_path,
    tracking_uri,
    unreachable,
)

T = TypeVar("T")

KEY_TAG = "annlab.key"  # one (cell, seed, inputs) in one grid: reruns replace the run
CELL_KEY_TAG = "annlab.cell_key"  # the same cell and seed trained on the same inputs, in any grid
CELL_TAG = "annlab.cell"
STAGE_TAG = "annlab.stage"
DATASET_TAG = "annlab.dataset"
GRID_TAG = "annlab.grid"
# "grid" for a grid's parent run; a cell's runs: "final" (one per seed, what the report
# compares) and "trial" (a learning rate tried on the tuning seed; the chosen one is final)
ROLE_TAG = "annlab.role"
CHOSEN_RATE_TAG = "annlab.chosen_learning_rate"  # on a final run: the learning rate it trained at
DIVERGED_TAG = "annlab.diverged"  # "true" when the run's loss stopped being finite
REUSED_TAG = "annlab.reused_from"  # the run that trained a cell DVC took from its cache
SUPERSEDED_TAG = "annlab.superseded_by"  # on a run left unfinished by a lost server: its upload
# MLflow 3's UI opens an experiment of this kind on its training runs table, not the GenAI view.
KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
PARENT_TAG = "mlflow.parentRunId"  # what MLflow's own nesting sets; works across processes


def stage_tag(default: str) -> dict[str, str]:
    """The DVC stage that logs (DVC sets $DVC_STAGE; `default` when a stage runs by hand)."""
    return {STAGE_TAG: os.environ.get("DVC_STAGE", default)}


# What `Params.for_cell` sets for a cell, logged with its params under their own keys.
CELL_COORDINATES = ["model.type", "train.optimizer", "model.activation"]


def cell_params(params: Params, model: str, optimizer: str, activation: str, seed: int) -> dict[str, Any]:
    """What is logged as a run's params: what the cell depends on (`cell_keys` and `data`) plus
    its coordinates.

    `seed` is the run's training seed (weights, shuffling); `split_seed` the seed that drew its
    data split: the same seed with data.split_per_seed, else the top-level `seed`. Left out: the
    grid lists (they say which cells and seeds exist, not how this run trains) and everything
    no cell depends on (other optimizers and architectures, MLflow's settings).
    """
    keys = [k for k in cell_keys(model, optimizer) if not k.startswith("grid.")]
    cell = params.for_cell(model, optimizer, activation)
    logged = {
        **flatten(cell.select([*keys, "data", *CELL_COORDINATES])),
        "model_type": model,
        "optimizer": optimizer,
        "activation": activation,
        "learning_rate": float(getattr(cell.optimizers, optimizer).learning_rate),
        "dataset": params.data.label,
        "seed": seed,
        "split_seed": seed if params.data.split_per_seed else params.seed,
    }
    if (tuning := params.tuning_for(optimizer)) is not None:  # how the cell chose its rate
        logged |= {f"tuning.{k}": v for k, v in tuning._asdict().items()}
    elif params.train.checkpoint == "best":  # how its runs chose their checkpoint
        logged["tuning.select_on"] = params.select_on
    return logged


def run_params(params: Params, row: Any, meta: dict[str, Any], seed: int) -> dict[str, Any]:
    """`cell_params` of a trained run, at the learning rate its meta.json records (a tuned
    cell's chosen one; without one, the optimizer's own)."""
    if "learning_rate" in meta:
        params = params.with_learning_rate(row["optimizer"], meta["learning_rate"])
    return cell_params(params, row["model"], row["optimizer"], row["activation"], seed)


def cell_key(cell: str, params: dict[str, Any], data_digest: str) -> str:
    """A key that is equal exactly when a cell is trained again on the same inputs and seed."""
    blob = json.dumps({"cell": cell, "params": params, "data": data_digest}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def run_key(cell_key: str, grid_id: str) -> str:
    """The key of a cell's run within one grid (a cell reused by another grid gets its own run)."""
    return hashlib.sha256(f"{cell_key}:{grid_id}".encode()).hexdigest()[:32]


def cell_run_name(cell: str, seed: int, seeds: list[int]) -> str:
    """A run is named after its cell, and its seed when the grid has several."""
    return cell if len(seeds) == 1 else f"{cell} seed={seed}"


def grid_name(params: Params) -> str:
    """A readable name for a grid's parent run: what was trained, and the grid id."""
    return f"grid {params.data.label} {params.models_label()} ({params.grid_id()[:8]})"


def grid_tags(params: Params) -> dict[str, str]:
    """Tags of a grid's parent run; the note is what the UI shows on the run's page."""
    grid = params.grid
    note = (
        f"annlab grid `{params.grid_id()}`: {'; '.join(params.architectures().values())}"
        f" on {params.data.label}, "
        f"{params.train.epochs} epochs, batch {params.train.batch_size}; "
        f"optimizers {', '.join(grid.optimizer)} x activations {', '.join(grid.activation)}; "
        f"seeds {', '.join(map(str, params.seeds))}. Each cell is a child run; "
        "the comparison report and figures are this run's artifacts."
    )
    tags = {DATASET_TAG: params.data.label, "mlflow.note.content": note}
    if os.environ.get("DVC_EXP_NAME"):  # set by `dvc exp run`: which experiment made this grid
        tags["annlab.dvc_exp"] = os.environ["DVC_EXP_NAME"]
    return tags


def store_lock(uri: str) -> contextlib.AbstractContextManager[object]:
    """An inter-process lock on the store, for the stages of this machine.

    MLflow creates and migrates a new database on first use; two stages doing that at once
    (parallel queued experiments) leave it broken, so the first use is serialized, as is the
    creation of a grid's parent run, and the registry's read-decide-write (report stages of
    parallel experiments register side by side). A SQLite store's lock sits next to it; a tracking
    server's, one per server (whatever credentials or trailing slash its URI has), in the
    user's cache directory. Stages on other machines are not covered: `grid_run(merge=True)`
    mends what they race.
    """
    from filelock import FileLock

    if (db := sqlite_path(uri)) is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(f"{db}.lock", timeout=300)
    parts = urllib.parse.urlsplit(uri)
    server = f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path.rstrip('/')}"
    locks = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "annlab" / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(locks / f"{hashlib.sha256(server.encode()).hexdigest()[:16]}.lock", timeout=300)


def code_version(cwd: Path | None = None) -> str:
    """The short commit, flagged when the pipeline's code (src/, dvc.yaml) differs from it."""
    commit = git_commit(cwd)
    try:
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "src", "dvc.yaml"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return commit[:12]
    return commit[:12] + (" + uncommitted changes to src/ or dvc.yaml" if changed else "")  # fmt: skip


def check_server(uri: str) -> None:
    """For a tracking server, fail at once, naming it, if it cannot be reached."""
    if is_server(uri) and (reason := unreachable(uri)):
        raise UserError(
            f"MLflow tracking server {redact(uri)} (MLFLOW_TRACKING_URI) cannot be reached ({reason});"
            " start it (`make server`), unset MLFLOW_TRACKING_URI to log to the local store, or set"
            f" {OFFLINE_ENV}=1 to run without MLflow and upload the runs later with `annlab sync`"
        )


class Link:
    """A stage's hold on the tracking store, which a tracking server may drop mid-run.

    MLflow calls go through `call`. The first one that fails while the server cannot be reached
    is reported once and every later one is skipped, so the stage still writes its DVC outputs
    and `annlab sync` uploads what MLflow missed. An error from a store that can be reached is
    a real error and is raised. Offline ($ANNLAB_OFFLINE), every call is skipped.
    """

    def __init__(self, uri: str | None = None) -> None:
        self.uri = uri or tracking_uri()
        self.lost: str | None = f"{OFFLINE_ENV} is set" if offline() else None

    @property
    def up(self) -> bool:
        """Whether MLflow calls are still made."""
        return self.lost is None

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """`fn(*args, **kwargs)`, or None once the server is lost (or offline)."""
        if self.lost is not None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception:
            reason = unreachable(self.uri) if is_server(self.uri) else None
            if reason is None:
                raise
            self.lost = f"{redact(self.uri)} lost ({reason})"
            print(
                f"warning: MLflow tracking server {redact(self.uri)} was lost ({reason}); going on"
                " without it: the DVC outputs are written, and `annlab sync` uploads the runs it missed",
                file=sys.stderr,
                flush=True,
            )
            return None


def experiment_id(name: str) -> str:
    """Point MLflow at the store and return the experiment's id, creating it if needed."""
    uri = tracking_uri()
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):
        client = MlflowClient()
        found = client.get_experiment_by_name(name)
        if found is not None:
            if KIND_TAG not in found.tags:
                client.set_experiment_tag(found.experiment_id, KIND_TAG, MODEL_TRAINING)
            return found.experiment_id
        location = None
        if (db := sqlite_path(uri)) is not None:
            # Next to the database, not under whatever directory the stage happens to run in
            # (queued experiments run in temporary copies of the repo).
            location = (db.parent / "mlartifacts").as_uri()
        try:
            return client.create_experiment(name, artifact_location=location, tags={KIND_TAG: MODEL_TRAINING})
        except mlflow.exceptions.MlflowException:
            # A stage on another machine created it first (the lock covers this one only).
            return client.get_experiment_by_name(name).experiment_id


def find_runs(exp_id: str, filters: dict[str, str]) -> list[Run]:
    """The live runs whose tags equal `filters`, newest first."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in filters.items())
    return MlflowClient().search_runs([exp_id], filter_string=query, order_by=["attributes.start_time DESC"])


def grid_run(exp_id: str, grid_id: str, name: str, tags: dict[str, str], merge: bool = False) -> str:
    """The id of the grid's parent run, created (RUNNING until the report ends it) if missing.

    Cells that train side by side (`make repro JOBS=2`) would each create one: the store's
    lock makes the second find the first's. Cells on other machines sharing a tracking server
    are not covered by the lock and may each create one; with `merge` (the report and
    `annlab sync`), the oldest is kept, every cell run of the grid is put under it and the
    others are deleted, so the UI shows one grid. A cell still training elsewhere may yet log
    under a deleted parent: the next report or sync moves it too.
    """
    client = MlflowClient()
    with store_lock(mlflow.get_tracking_uri()):
        found = find_runs(exp_id, {GRID_TAG: grid_id, ROLE_TAG: "grid"})
        if not found:
            tags = {GRID_TAG: grid_id, ROLE_TAG: "grid", **tags}
            return client.create_run(exp_id, run_name=name, tags=tags).info.run_id
    keep, *extra = sorted(found, key=lambda r: (r.info.start_time, r.info.run_id))
    if merge:
        # ("cell": the role of a cell's runs before trials and final runs were told apart)
        roles = ("final", "trial", "cell")
        children = [r for role in roles for r in find_runs(exp_id, {GRID_TAG: grid_id, ROLE_TAG: role})]
        for child in children:
            if child.data.tags.get(PARENT_TAG) != keep.info.run_id:
                # A rerun may have deleted the child since the search: nothing to move then.
                with contextlib.suppress(mlflow.exceptions.MlflowException):
                    client.set_tag(child.info.run_id, PARENT_TAG, keep.info.run_id)
        for dup in extra:
            client.delete_run(dup.info.run_id)
    return keep.info.run_id


@contextlib.contextmanager
def start_cell_run(
    link: Link, exp_id: str, key: str, name: str, parent_id: str, tags: dict[str, str]
) -> Iterator[None]:
    """A cell's run under its grid's run (the active run), replacing earlier finished runs with
    the same key; nothing while `link` is down.

    It ends FINISHED, FAILED on an error, or KILLED when the stage is interrupted (Ctrl-C,
    SIGTERM). Killed and failed runs are kept, so the UI shows what happened to them; only a
    finished run is replaced by a rerun of the same cell on the same inputs.
    """

    def start() -> None:
        client = MlflowClient()
        for old in find_runs(exp_id, {KEY_TAG: key}):
            if old.info.status == "FINISHED":
                client.delete_run(old.info.run_id)
        # The parent is named by tag rather than `parent_run_id=`, which needs the parent to be
        # active: a grid whose report has finished it may still gain a rerun cell.
        mlflow.start_run(
            experiment_id=exp_id,
            run_name=name,
            tags={KEY_TAG: key, ROLE_TAG: "final", PARENT_TAG: parent_id, **tags},
        )

    link.call(start)
    try:
        yield
    except (KeyboardInterrupt, Interrupted):
        link.call(mlflow.end_run, "KILLED")
        raise
    except BaseException:
        link.call(mlflow.end_run, "FAILED")
        raise
    link.call(mlflow.end_run, "FINISHED")


def role_tags(role: str, learning_rate: float) -> dict[str, str]:
    """A cell's run's role ("final" or "trial") and, on a final run, the learning rate it trained at."""
    tags = {ROLE_TAG: role}
    if role == "final":
        tags[CHOSEN_RATE_TAG] = repr(float(learning_rate))
    return tags


def active_run_id() -> str | None:
    """The run being logged to, if any."""
    run = mlflow.active_run()
    return run.info.run_id if run else None


def promote_trial(
    run_id: str, learning_rate: float, seed_dir: Path, history_csv: Path, split_dir: Path, name: str
) -> None:
    """Make the chosen trial its seed's final run: tag it so, name it as the seed's run, and log
    the seed's history and its model (a trial logs none). Its status and duration stay those of
    its training."""
    client = MlflowClient()
    before = client.get_run(run_id)
    try:
        with mlflow.start_run(run_id=run_id):
            mlflow.set_tags({**role_tags("final", learning_rate), "mlflow.runName": name})
            mlflow.log_artifact(str(history_csv), artifact_path="history")
            meta = io.read_json(seed_dir / "meta.json")
            if not meta["diverged"]:
                from annlab.serve import pyfunc

                pyfunc.log_model(seed_dir, split_dir, pip_requirements())
    finally:
        client.set_terminated(run_id, before.info.status, end_time=before.info.end_time)


def log_saved_run(
    exp_id: str,
    parent_id: str,
    tags: dict[str, str],
    key: str,
    name: str,
    logged: dict[str, Any],
    seed_dir: Path,
    history_csv: Path,
    split_dir: Path,
    dataset: str,
) -> str:
    """Log a run that a stage took from its previous outputs rather than trained (a tuned cell's
    tuning seed's run when only seeds were added) as a finished run of this grid: its params,
    datasets, per-epoch curves, history and model. Returns its id."""
    import pandas as pd

    with start_cell_run(Link(), exp_id, key, name, parent_id, tags):
        run_id = mlflow.active_run().info.run_id
        log_history(run_id, pd.read_csv(history_csv, float_precision="round_trip"))
        log_cell_inputs(logged, tags[GRID_TAG], training_splits(split_dir), dataset)
        mlflow.set_tag(
            "mlflow.note.content",
            "Not trained again: adding seeds left the tuning seed's trials as they were, so this"
            " run's files are the previous grid's (its trials are there, under the same cell).",
        )
        log_cell_outputs(seed_dir, history_csv, split_dir)
    return run_id


def log_history(run_id: str, history: Any) -> None:
    """A run's per-epoch curves from its history (a DataFrame of the history CSV), step = epoch:
    for a run logged from its files rather than while it trained."""
    now = int(time.time() * 1000)
    log_metric_points(
        run_id,
        [
            Metric(column, float(value), now, int(epoch))
            for column in ("loss", "accuracy", "val_loss", "val_accuracy")
            for epoch, value in zip(history["epoch"], history[column], strict=True)
        ],
    )


def training_splits(split_dir: Path) -> dict[str, tuple[Any, Any]]:
    """A split's training and validation arrays, as `log_cell_inputs` logs them."""
    return {
        part: (io.load_array(split_dir, f"x_{short}"), io.load_array(split_dir, f"y_{short}"))
        for part, short in (("training", "train"), ("validation", "val"))
    }


def log_cell_inputs(
    logged: dict[str, Any], grid_id: str, splits: dict[str, tuple[Any, Any]], dataset: str
) -> None:
    """Log a cell's params and its training and validation sets to the active run."""
    mlflow.log_params({**logged, "grid_id": grid_id})
    for split, (x, y) in splits.items():
        data = mlflow.data.from_numpy(x, targets=y, name=f"{dataset}-{split}")
        try:
            mlflow.log_input(data, context=split)
        except mlflow.exceptions.MlflowException as exc:
            # Cells trained side by side log the same dataset: the store records it once, and the
            # second insert of a race fails ("UNIQUE constraint failed"); it exists now, so link it.
            if "UNIQUE constraint" not in str(exc) and "IntegrityError" not in str(exc):
                raise
            time.sleep(0.5)
            mlflow.log_input(data, context=split)


def log_cell_outputs(
    seed_dir: Path, history_csv: Path, split_dir: Path, model: Any = None, with_model: bool = True
) -> None:
    """Log what train wrote for one seed of a cell to the active run: time, divergence, parameter
    count, history CSV, summary and (unless it diverged) the model, which takes raw inputs
    (`annlab.serve.pyfunc`).

    Args:
        split_dir: the data split the seed trained on (its raw test rows give the input example).
        model: the trained Keras model; None loads `seed_dir/model.keras` (in safe mode).
        with_model: False for a run rebuilt for a reused cell, whose model is in the run that trained it.
    """
    meta, timing = io.read_json(seed_dir / "meta.json"), io.read_json(seed_dir / "timing.json")
    metrics = {"train_seconds": timing["train_seconds"], "diverged": float(meta["diverged"])}
    mlflow.log_metrics({**metrics, "n_params": float(meta["n_params"])})
    mlflow.set_tag(DIVERGED_TAG, str(meta["diverged"]).lower())
    mlflow.log_artifact(str(history_csv), artifact_path="history")
    mlflow.log_artifact(str(seed_dir / "model_summary.txt"))
    if meta["diverged"] or not with_model:  # NaN weights: no model worth serving
        return
    from annlab.serve import pyfunc

    pyfunc.log_model(seed_dir, split_dir, pip_requirements(), model)


MAX_BATCH = 1000  # metrics per log_batch request: MLflow refuses more


def log_metric_points(run_id: str, points: list[Metric]) -> None:
    """Log metric points to a run in as few requests as MLflow allows."""
    client = MlflowClient()
    for i in range(0, len(points), MAX_BATCH):
        client.log_batch(run_id, metrics=points[i : i + MAX_BATCH])


def changed_metrics(run: Run, metrics: dict[str, float]) -> dict[str, float]:
    """The metrics `run` lacks or holds with another value: what to log so nothing is logged twice."""
    return {k: v for k, v in metrics.items() if run.data.metrics.get(k) != v}


def pip_requirements() -> list[str]:
    """Pinned requirements of a logged Keras model, given so MLflow need not infer them (slow)."""
    reqs = []
    for dist in ("mlflow", "keras", "tensorflow-cpu", "tensorflow", "numpy", "pandas", "pyarrow", "pillow"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return reqs
