"""The Ray executor (`RayExecutor`): the grid's cells as Ray tasks on the cluster at RAY_ADDRESS.

Workers get the workspace's annlab code through Ray's `py_modules`, the data through the object
store (once per grid), train in a scratch workspace and send the outputs back; the driver
writes them. A worker that can reach the driver's MLflow store (`store.reach`: a tracking
server that answers, or a SQLite file on the driver's own machine) logs its cell while it
trains, as a local worker does; one that cannot trains offline, and the report stage files its
runs from the DVC outputs, as `annlab sync` does. Ray retries a task whose worker died once
(`max_retries=1`); the report marks the run such an attempt left RUNNING as replaced by its
retry's.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from annlab.errors import UserError
from annlab.run.cell import Job, Outcome, train_cell, warm_up
from annlab.track import store

CPUS_ENV = "ANNLAB_CPUS_PER_CELL"
GPUS_ENV = "ANNLAB_GPUS_PER_CELL"


def ray_resources(env: dict[str, str] | None = None) -> dict[str, float]:
    """Ray's resource request per cell, from ANNLAB_CPUS_PER_CELL and ANNLAB_GPUS_PER_CELL."""
    env = dict(os.environ) if env is None else env
    resources = {}
    for name, key, default in (("num_cpus", CPUS_ENV, 1.0), ("num_gpus", GPUS_ENV, 0.0)):
        raw = env.get(key, "").strip()
        try:
            value = float(raw) if raw else default
        except ValueError:
            value = -1.0
        if value < 0 or (name == "num_cpus" and value == 0):
            allowed = "a number above 0, e.g. 1 or 0.5" if name == "num_cpus" else "0 or more, e.g. 0.5"
            raise UserError(f"{key}={raw!r}: expected {allowed}")
        resources[name] = value
    return resources


def environment_versions() -> dict[str, str]:
    """The versions a cell's bits depend on: Python, Ray, TensorFlow, Keras, NumPy."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name, dists in {
        "ray": ["ray"],
        "tensorflow": ["tensorflow-cpu", "tensorflow"],
        "keras": ["keras"],
        "numpy": ["numpy"],
    }.items():
        for dist in dists:
            try:
                versions[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
        else:
            versions[name] = "missing"
    return versions


def version_mismatch(driver: dict[str, str], cluster: dict[str, str]) -> str | None:
    """A message naming each package whose version differs, or None when all agree."""
    differ = [f"{k} {driver[k]} here, {cluster.get(k, 'missing')} on the cluster" for k in driver]
    differ = [line for k, line in zip(driver, differ, strict=True) if driver[k] != cluster.get(k)]
    if not differ:
        return None
    return (
        "the Ray cluster's environment differs from this one, which would change the results: "
        + "; ".join(differ)
        + ". Install requirements.lock on the cluster's nodes."
    )


def _ray_versions() -> dict[str, str]:
    return environment_versions()


DATA_COPY = "annlab-data"  # a Ray worker's copy of the grid's data: <tmp>/annlab-data-<pid>-<digest>


def _grid_data(data: dict[str, bytes], digest: str) -> Path:
    """This worker's copy of the grid's data, in the node's temporary directory: written whole
    by its first cell of the grid, then read by its next ones. Writing one deletes this
    worker's copy of an earlier grid and the copies of workers that have ended: Ray ends a
    job's workers, and a GPU task's, without running their exit handlers."""
    import shutil

    scratch = Path(tempfile.gettempdir())
    root = scratch / f"{DATA_COPY}-{os.getpid()}-{digest[:16]}"
    if root.is_dir():
        return root
    for old in [*scratch.glob(f"{DATA_COPY}-*-*"), *scratch.glob(f".{DATA_COPY}-*-*")]:  # and half-written
        owner = old.name.split("-")[2]
        if owner.isdigit() and (int(owner) == os.getpid() or not _running(int(owner))):
            shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=scratch))
    for rel, blob in data.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(blob)
    tmp.rename(root)  # whole or not at all
    return root


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


@contextlib.contextmanager
def _mlflow_for(place: store.Place | None, experiment: str) -> Iterator[str]:
    """A Ray task's MLflow setting while its cell trains: the driver's store (`place`) when this
    worker reaches it and can log there, as a local worker does; offline otherwise, and then
    why, so that the driver's report stage files the run from the outputs. The worker's
    environment is put back afterwards: the process goes on to other tasks."""
    before = dict(os.environ)
    why_not = ""
    try:
        if place is not None:
            os.environ.update(place.env)
            os.environ["MLFLOW_TRACKING_URI"] = place.uri
            os.environ[store.SOURCE_COMMIT_ENV] = place.commit
            os.environ.pop(store.OFFLINE_ENV, None)
            why_not = _cannot_log(place, experiment)
        if place is None or why_not:
            os.environ[store.OFFLINE_ENV] = "1"
        yield why_not
    finally:
        for key in set(before) | set(os.environ):
            if key not in before:
                del os.environ[key]
            elif os.environ.get(key) != before[key]:
                os.environ[key] = before[key]


def _cannot_log(place: store.Place, experiment: str) -> str:
    """Why this worker cannot log to the driver's store; "" if it can. Beyond reaching it, one
    write (the experiment's kind, as it is) proves the credentials and permissions, so that a
    store this worker may not write fails nothing: the cell trains offline instead."""
    if store.reach(place) is None:
        return "it cannot reach it from there"
    from mlflow.tracking import MlflowClient

    from annlab.track import tracking

    try:
        exp_id = tracking.experiment_id(experiment)
        MlflowClient().set_experiment_tag(exp_id, tracking.KIND_TAG, tracking.MODEL_TRAINING)
    except Exception as exc:  # whatever the store answers: the run is filed by the driver instead
        return f"it cannot log there: {type(exc).__name__}"
    return ""


def _ray_train(
    job: Job, params_text: str, data: dict[str, bytes], digest: str, place: store.Place | None = None
) -> Outcome:
    """A Ray task: train one cell in a scratch workspace and return its outputs, logging it to
    the driver's MLflow store (`place`) if this worker can (`_mlflow_for`)."""
    from annlab.params import load_params

    warm_up()  # imports and thread pools on this worker's first cell; later cells find them done
    root = _grid_data(data, digest)
    with tempfile.TemporaryDirectory(prefix="annlab-cell-") as tmp:
        work = Path(tmp)
        (work / "params.yaml").write_text(params_text, encoding="utf-8")
        data_arg = job.arg("--data")
        (work / data_arg).parent.mkdir(parents=True, exist_ok=True)
        (work / data_arg).symlink_to(root, target_is_directory=True)
        experiment = load_params(work / "params.yaml").mlflow.experiment
        with _mlflow_for(place, experiment) as why_not:
            outcome = train_cell(job, work)
        outcome.unlogged = why_not
        if outcome.status == "trained":
            for out in job.outputs:
                for path in sorted((work / out).rglob("*")):
                    if path.is_file():
                        outcome.files[str(path.relative_to(work))] = path.read_bytes()
    return outcome


class RayExecutor:
    """Ray tasks on the cluster at `address`, one per cell, with its resource request."""

    def __init__(self, address: str, data_dir: Path, params_path: Path) -> None:
        self.address = address
        self.data_dir = data_dir
        self.params_path = params_path
        self.resources = ray_resources()
        self._ray: Any = None

    def connect(self) -> None:
        """Connect, ship annlab's code, and stop before any dispatch if the versions differ."""
        try:
            import ray
        except ImportError:
            raise UserError("Ray is not installed in this environment: `make venv` installs it") from None

        import annlab

        forwarded = ("ANNLAB_", "TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")
        env_vars = {k: v for k, v in os.environ.items() if k.startswith(forwarded)}
        env_vars.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        try:
            ray.init(
                address=self.address,
                runtime_env={"py_modules": [str(Path(annlab.__file__).parent)], "env_vars": env_vars},
                log_to_driver=False,
                logging_level="ERROR",
            )
        except (ConnectionError, RuntimeError) as exc:
            raise UserError(f"Ray cluster at {self.address} (RAY_ADDRESS): {exc}") from None
        self._ray = ray
        cluster = ray.get(ray.remote(num_cpus=0)(_ray_versions).remote())
        if message := version_mismatch(environment_versions(), cluster):
            ray.shutdown()
            raise UserError(message)

    def describe(self) -> str:
        """Where the cells run, for the driver's first line."""
        cpus = self._ray.cluster_resources().get("CPU", 0)
        gpus = self._ray.cluster_resources().get("GPU", 0)
        where = f"executor: ray at {self.address}, {cpus:g} CPUs"
        return where + (f", {gpus:g} GPUs" if gpus else "")

    def run(
        self, cells: list[Job], stop: Callable[[], int], after: Callable[[], Job | None] | None = None
    ) -> Iterator[Outcome]:
        """Train `cells` as Ray tasks, yielding each outcome as it comes; a stop cancels them.
        `after` is not asked: the stages after the grid write the workspace and log to its MLflow
        store, so the driver's `dvc repro` runs them."""
        from annlab import io

        ray = self._ray
        data = {
            str(path.relative_to(self.data_dir)): path.read_bytes()
            for path in sorted(self.data_dir.rglob("*"))
            if path.is_file()
        }
        data_ref = ray.put(data)  # once per grid: every task reads the same object
        digest = io.data_digest(self.data_dir)
        params_text = self.params_path.read_text(encoding="utf-8")
        task = ray.remote(max_retries=1, **self.resources)(_ray_train)
        place = store.place()
        pending = {task.remote(cell, params_text, data_ref, digest, place): cell for cell in cells}
        cancelled = 0
        told = place is None  # offline: nobody logs, and the stages say so
        try:
            while pending:
                if stop() > cancelled:
                    cancelled = stop()
                    for ref in pending:
                        ray.cancel(ref, force=cancelled > 1)
                done, _ = ray.wait(list(pending), num_returns=1, timeout=0.2)
                for ref in done:
                    cell = pending.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.TaskCancelledError:
                        outcome = Outcome(cell, "interrupted", error="cancelled")
                    except ray.exceptions.RayError as exc:
                        status = "interrupted" if cancelled else "failed"
                        outcome = Outcome(cell, status, error=_ray_error(exc))
                    if outcome.status == "trained":
                        write_outputs(outcome)
                        if outcome.unlogged and not told:
                            told = True
                            print(
                                f"{outcome.worker}: this Ray worker does not log to MLflow's store"
                                f" {store.redact(place.uri)} ({outcome.unlogged}): the report stage files"
                                " the runs of the cells it trains from their outputs",
                                flush=True,
                            )
                    yield outcome
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            ray.shutdown()


def _ray_error(exc: Exception) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def write_outputs(outcome: Outcome) -> None:
    """Write the outputs a remote worker sent back, each folder whole or not at all."""
    from annlab import io

    for out in outcome.job.outputs:
        with io.atomic_path(out) as tmp:
            tmp.mkdir()
            prefix = Path(out)
            for rel, blob in outcome.files.items():
                path = Path(rel)
                if path.is_relative_to(prefix):
                    target = tmp / path.relative_to(prefix)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(blob)
    outcome.files = {}
