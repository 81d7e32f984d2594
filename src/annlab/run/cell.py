"""Run the grid's stale cells on warm workers: local processes by default, a Ray cluster on request.

A cold `dvc repro` of a cell spends most of its time importing TensorFlow and MLflow. A warm
worker imports them once and trains many cells in turn, each exactly as the stage command
would (`annlab.stages.train.main` with the arguments dvc.yaml gives it), so a cell has the
same bits whichever worker trains it. A local worker also runs the stages after the grid
(evaluate, plot, report) once the cells are done, the same way. The executor only runs
them: `annlab.run.repro` decides which are stale and records each finished one with DVC.

- `LocalExecutor`: JOBS worker processes on this machine. They log to MLflow as the stage does
  and write their outputs into the workspace. A worker that dies (SIGKILL, out of memory) is
  replaced, and its cell retried once.
- `RayExecutor`: Ray tasks on the cluster at RAY_ADDRESS. Workers get the workspace's annlab
  code through Ray's `py_modules`, the data through the object store (once per grid), train
  in a scratch workspace and send the outputs back; the driver writes them. A worker that can
  reach the driver's MLflow store (`store.reach`: a tracking server that answers, or a SQLite
  file on the driver's own machine) logs its cell while it trains, as a local worker does;
  one that cannot trains offline, and the report stage files its runs from the DVC outputs,
  as `annlab sync` does. Ray retries a task whose worker died once (`max_retries=1`); the
  report marks the run such an attempt left RUNNING as replaced by its retry's.
"""

from __future__ import annotations

import contextlib
import io as _io
import os
import resource
import shlex
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annlab.errors import Interrupted, UserError
from annlab.track import store

CPUS_ENV = "ANNLAB_CPUS_PER_CELL"
GPUS_ENV = "ANNLAB_GPUS_PER_CELL"
TRAIN_MODULE = "annlab.stages.train"


@dataclass(frozen=True)
class Cell:
    """One grid cell to train: its DVC stage and the train stage's arguments (from dvc.yaml).
    Also a stage after the grid, which a warm worker runs once the cells are done (`module`)."""

    stage: str  # train@ann-adam-relu
    argv: tuple[str, ...]
    module: str = TRAIN_MODULE

    @property
    def name(self) -> str:
        return self.stage.split("@", 1)[-1]

    @property
    def is_cell(self) -> bool:
        return self.module == TRAIN_MODULE

    def arg(self, flag: str) -> str:
        """The value of one of the stage's options, e.g. `--model-dir`."""
        return self.argv[self.argv.index(flag) + 1]

    @property
    def outputs(self) -> tuple[str, str]:
        """The folders the cell writes: its models and its histories."""
        return self.arg("--model-dir"), self.arg("--history")


@dataclass
class Outcome:
    """What became of a cell: trained (with its summary), failed (with the error) or interrupted."""

    cell: Cell
    status: str  # "trained" | "failed" | "interrupted"
    seconds: float = 0.0  # wall time on the worker, from the task's start to its outputs written
    train_seconds: float = 0.0
    val_accuracy: float | None = None
    error: str = ""
    files: dict[str, bytes] = field(default_factory=dict)  # Ray: the outputs, by relative path
    output: str = ""  # a stage after the grid: what it printed
    worker: str = ""  # which process trained it (host:pid)
    peak_rss_mib: float = 0.0  # that process's peak resident memory so far
    unlogged: str = ""  # why a Ray worker did not log it to the driver's MLflow store, if it did not


def cell_from_command(stage: str, cmd: str) -> Cell:
    """A cell from its stage's command line: what follows `-m annlab.stages.train`."""
    words = shlex.split(cmd)
    if TRAIN_MODULE not in words:
        raise UserError(f"dvc.yaml: stage {stage} does not run `python -m {TRAIN_MODULE}`: {cmd}")
    return Cell(stage, tuple(words[words.index(TRAIN_MODULE) + 1 :]))


def stage_from_command(stage: str, cmd: str) -> Cell | None:
    """A stage after the grid as a job for a warm worker, when its command runs one of annlab's
    stage modules (`python -m annlab.stages.<name> ...`); None otherwise (DVC runs it)."""
    words = shlex.split(cmd)
    if "-m" not in words[:-1]:
        return None
    at = words.index("-m") + 1
    if not words[at].startswith("annlab.stages.") or words[at] == TRAIN_MODULE:
        return None
    return Cell(stage, tuple(words[at + 1 :]), words[at])


def train_cell(cell: Cell, root: Path | None = None) -> Outcome:
    """Train a cell in this process, as its stage command would, from `root` (default: here);
    or run a stage after the grid (`cell.module`), whose outcome is "done" with what it printed.

    The stage's printing is kept from the terminal (the driver prints one line per cell) and
    returned with the error when the cell fails.
    """
    import importlib

    stage = importlib.import_module(cell.module)
    argv = list(cell.argv)
    if root is not None:
        argv += ["--params", str(root / "params.yaml")]
    started = time.perf_counter()
    printed = _io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), _cwd(root):
            summary = stage.main(argv)
    except (KeyboardInterrupt, Interrupted):
        return Outcome(cell, "interrupted", time.perf_counter() - started, error="interrupted")
    except UserError as exc:
        return Outcome(cell, "failed", time.perf_counter() - started, error=str(exc))
    except Exception as exc:  # the cell's own error; the worker goes on with the next cell
        detail = "".join(traceback.format_exception(exc)[-3:]).strip()
        return Outcome(cell, "failed", time.perf_counter() - started, error=f"{exc!r}\n{detail}")
    finally:
        _reset_keras()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if not cell.is_cell:
        seconds, output = time.perf_counter() - started, printed.getvalue()
        return Outcome(cell, "done", seconds, output=output, worker=worker, peak_rss_mib=peak_rss_mib)
    return Outcome(
        cell,
        "trained",
        time.perf_counter() - started,
        train_seconds=summary["train_seconds"],
        val_accuracy=summary["val_accuracy"],
        worker=worker,
        peak_rss_mib=peak_rss_mib,
    )


@contextlib.contextmanager
def _cwd(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _reset_keras() -> None:
    """Forget the last cell's layers and graphs; seeds are set again by the next cell."""
    import keras

    keras.backend.clear_session()


def warm_up() -> None:
    """Import what a cell needs and set TensorFlow's thread pools, once per worker."""
    import keras  # noqa: F401
    import mlflow  # noqa: F401

    from annlab.stages import train  # noqa: F401
    from annlab.train import model as annmodel
    from annlab.train.speed import Speed

    annmodel.configure(Speed.from_env())


# ---------------------------------------------------------------------------------------------
# Local processes


def _watch_parent() -> None:
    """End this worker when the driver is gone (killed outright, so it could not say so)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _local_worker(conn: Any) -> None:
    """A worker's life: warm up, then train the cells the driver sends until it sends None."""
    from annlab import runtime

    os.setpgrp()  # Ctrl-C reaches the driver only, which asks each worker to stop exactly once
    _watch_parent()
    runtime.handle_stop_signals()
    try:
        warm_up()
        conn.send(("ready", os.getpid()))
        while (cell := conn.recv()) is not None:
            outcome = train_cell(cell)
            conn.send(outcome)
            if outcome.status == "interrupted":
                break
    except (KeyboardInterrupt, Interrupted, EOFError, BrokenPipeError):
        pass  # asked to stop while idle, or the driver is gone
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no interpreter teardown: 1.3 s with TensorFlow loaded, and nothing to do


@dataclass
class _Worker:
    process: Any
    conn: Any
    cell: Cell | None = None
    ready: bool = False
    closed: bool = False


class LocalExecutor:
    """JOBS warm worker processes on this machine."""

    def __init__(self, jobs: int) -> None:
        import multiprocessing as mp

        self.jobs = jobs
        self.ctx = mp.get_context("spawn")  # a fresh interpreter: nothing of the driver's DVC state
        self.workers: list[_Worker] = []

    def start(self) -> None:
        """Start the JOBS workers now: they import TensorFlow and MLflow while the driver does
        other work (the stages before the grid), and wait for cells."""
        while len(self.workers) < self.jobs:
            self._spawn()

    def close(self) -> None:
        """Tell every worker to exit, and wait for them (killing any that hangs). One still
        warming up has nothing to finish: it is killed rather than waited for."""
        for w in self.workers:
            if w.ready:
                _close(w)
            else:
                w.process.kill()
        for w in self.workers:
            w.process.join(timeout=30)
            if w.process.is_alive():
                w.process.kill()
        self.workers.clear()

    def _spawn(self) -> None:
        ours, theirs = self.ctx.Pipe()
        process = self.ctx.Process(target=_local_worker, args=(theirs,), daemon=True)
        process.start()
        theirs.close()
        self.workers.append(_Worker(process, ours))

    def describe(self) -> str:
        return f"executor: local, {self.jobs} worker{'s' if self.jobs != 1 else ''}"

    def run(
        self, cells: list[Cell], stop: Callable[[], int], after: Callable[[], Cell | None] | None = None
    ) -> Iterator[Outcome]:
        """Train `cells`, yielding each outcome as it comes. `stop()` counts the stop requests
        (Ctrl-C) so far: at the first, no cell starts and each worker is asked to stop after its
        step; at the second, to stop at once.

        `after()`: the next stage after the grid, asked for once every cell is done and the
        last outcome handled (the driver records it first), until it returns None. A warm
        worker runs it, which spares that stage's imports; the workers wait for it meanwhile."""
        from multiprocessing.connection import wait

        queue: deque[Cell] = deque(cells)
        tries: dict[str, int] = {}
        workers = self.workers  # those `start` began, if it was called
        signalled = 0
        spares = self.jobs + len(cells)  # workers started beyond the first JOBS, at most
        spawn = self._spawn

        def handle(w: _Worker, message: Any) -> Outcome | None:
            if isinstance(message, tuple) and message[0] == "ready":
                w.ready = True
                return None
            w.cell = None
            return message

        def dispatch() -> None:
            nonlocal after
            busy = any(w.cell is not None for w in workers)
            for w in workers:
                if not w.ready or w.cell is not None or w.closed:
                    continue
                if not queue and not busy and after is not None and not signalled:
                    if (job := after()) is None:
                        after = None
                    else:
                        queue.append(job)
                if queue and not signalled:
                    w.cell = queue.popleft()
                    tries[w.cell.stage] = tries.get(w.cell.stage, 0) + 1
                    w.conn.send(w.cell)
                    busy = True
                elif not (busy and after is not None and not signalled):  # else: wait for what comes after
                    _close(w)

        while len(workers) < min(self.jobs, max(len(queue), after is not None)):  # one for `after`
            spawn()
        try:
            while workers:
                if stop() > signalled:
                    signalled = stop()
                    if signalled == 1:
                        queue.clear()
                    for w in workers:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(w.process.pid, signal.SIGINT)
                dispatch()
                ready = wait([w.conn for w in workers] + [w.process.sentinel for w in workers], 0.2)
                for w in list(workers):
                    if w.conn in ready:
                        try:
                            if (outcome := handle(w, w.conn.recv())) is not None:
                                yield outcome
                            continue
                        except (EOFError, OSError):
                            pass  # its end is closed: the worker is gone
                    elif w.process.sentinel not in ready:
                        continue
                    w.process.join()
                    workers.remove(w)
                    if w.cell is not None:
                        if w.cell.is_cell:
                            _clean_partial_outputs(w.cell)
                        died = f"its worker died ({_exit_reason(w.process.exitcode)})"
                        if tries[w.cell.stage] < 2 and not signalled:
                            print(f"{w.cell.name}: {died}; retrying it on a fresh worker", flush=True)
                            queue.appendleft(w.cell)
                        else:
                            yield Outcome(w.cell, "interrupted" if signalled else "failed", error=died)
                    # A fresh worker while cells wait, within a budget: one that dies on start
                    # (an import error, say) must not be replaced forever.
                    if queue and not signalled and len(workers) < self.jobs and spares > 0:
                        spares -= 1
                        spawn()
                if not workers and queue and not signalled:
                    # Every worker died before it could take a cell (its error is above).
                    while queue:
                        yield Outcome(queue.popleft(), "failed", error="no worker could start (see above)")
        finally:
            self.close()


def _close(w: _Worker) -> None:
    """Tell an idle worker to exit (once)."""
    if not w.closed:
        w.closed = True
        with contextlib.suppress(OSError):
            w.conn.send(None)


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _clean_partial_outputs(cell: Cell) -> None:
    """Remove the temporary siblings a killed worker left (`io.atomic_path` names them `.<name>.*`)."""
    import shutil

    for out in cell.outputs:
        path = Path(out)
        for tmp in path.parent.glob(f".{path.name}.*"):
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Ray


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
    cell: Cell, params_text: str, data: dict[str, bytes], digest: str, place: store.Place | None = None
) -> Outcome:
    """A Ray task: train one cell in a scratch workspace and return its outputs, logging it to
    the driver's MLflow store (`place`) if this worker can (`_mlflow_for`)."""
    from annlab.params import load_params

    warm_up()  # imports and thread pools on this worker's first cell; later cells find them done
    root = _grid_data(data, digest)
    with tempfile.TemporaryDirectory(prefix="annlab-cell-") as tmp:
        work = Path(tmp)
        (work / "params.yaml").write_text(params_text, encoding="utf-8")
        data_arg = cell.arg("--data")
        (work / data_arg).parent.mkdir(parents=True, exist_ok=True)
        (work / data_arg).symlink_to(root, target_is_directory=True)
        experiment = load_params(work / "params.yaml").mlflow.experiment
        with _mlflow_for(place, experiment) as why_not:
            outcome = train_cell(cell, work)
        outcome.unlogged = why_not
        if outcome.status == "trained":
            for out in cell.outputs:
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
        cpus = self._ray.cluster_resources().get("CPU", 0)
        gpus = self._ray.cluster_resources().get("GPU", 0)
        where = f"executor: ray at {self.address}, {cpus:g} CPUs"
        return where + (f", {gpus:g} GPUs" if gpus else "")

    def run(
        self, cells: list[Cell], stop: Callable[[], int], after: Callable[[], Cell | None] | None = None
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

    for out in outcome.cell.outputs:
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
