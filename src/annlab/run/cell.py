"""What one worker runs, a `Job`, and what it returns, an `Outcome`: shared by both executors.

A cold `dvc repro` of a cell spends most of its time importing TensorFlow and MLflow. A warm
worker imports them once and trains many cells in turn, each exactly as the stage command
would (`annlab.stages.train.main` with the arguments dvc.yaml gives it), so a cell has the
same bits whichever worker trains it. A local worker also runs the stages after the grid
(evaluate, plot, report) once the cells are done, the same way. The executors only run them
(`annlab.run.local`: warm local processes; `annlab.run.ray`: a Ray cluster): `annlab.run.repro`
decides which are stale and records each finished one with DVC.
"""

from __future__ import annotations

import contextlib
import io as _io
import os
import resource
import shlex
import socket
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from annlab.errors import Interrupted, UserError

TRAIN_MODULE = "annlab.stages.train"


@dataclass(frozen=True)
class Job:
    """A stage for a worker to run: a grid cell to train (its DVC stage and the train stage's
    arguments, from dvc.yaml), or a stage after the grid, run once the cells are done (`module`)."""

    stage: str  # train@ann-adam-relu
    argv: tuple[str, ...]
    module: str = TRAIN_MODULE

    @property
    def name(self) -> str:
        """The stage's name without its matrix prefix, e.g. `ann-adam-relu`."""
        return self.stage.split("@", 1)[-1]

    @property
    def is_cell(self) -> bool:
        """Whether this is a grid cell to train, not a stage after the grid."""
        return self.module == TRAIN_MODULE

    def arg(self, flag: str) -> str:
        """The value of one of the stage's options, e.g. `--model-dir`."""
        return self.argv[self.argv.index(flag) + 1]

    @property
    def outputs(self) -> tuple[str, ...]:
        """The folders the cell writes: its models, its histories and its learning-rate trials."""
        flags = ("--model-dir", "--history", "--tuning")
        return tuple(self.arg(flag) for flag in flags if flag in self.argv)


@dataclass
class Outcome:
    """What became of a job: trained (with its summary), failed (with the error) or interrupted."""

    job: Job
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


def cell_from_command(stage: str, cmd: str) -> Job:
    """A grid cell's job from its stage's command line: what follows `-m annlab.stages.train`."""
    words = shlex.split(cmd)
    if TRAIN_MODULE not in words:
        raise UserError(f"dvc.yaml: stage {stage} does not run `python -m {TRAIN_MODULE}`: {cmd}")
    return Job(stage, tuple(words[words.index(TRAIN_MODULE) + 1 :]))


def stage_from_command(stage: str, cmd: str) -> Job | None:
    """A stage after the grid as a job for a warm worker, when its command runs one of annlab's
    stage modules (`python -m annlab.stages.<name> ...`); None otherwise (DVC runs it)."""
    words = shlex.split(cmd)
    if "-m" not in words[:-1]:
        return None
    at = words.index("-m") + 1
    if not words[at].startswith("annlab.stages.") or words[at] == TRAIN_MODULE:
        return None
    return Job(stage, tuple(words[at + 1 :]), words[at])


def train_cell(job: Job, root: Path | None = None) -> Outcome:
    """Train a cell in this process, as its stage command would, from `root` (default: here);
    or run a stage after the grid (`job.module`), whose outcome is "done" with what it printed.

    The stage's printing is kept from the terminal (the driver prints one line per cell) and
    returned with the error when the cell fails.
    """
    import importlib

    stage = importlib.import_module(job.module)
    argv = list(job.argv)
    if root is not None:
        argv += ["--params", str(root / "params.yaml")]
    started = time.perf_counter()
    printed = _io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), _cwd(root):
            summary = stage.main(argv)
    except (KeyboardInterrupt, Interrupted):
        return Outcome(job, "interrupted", time.perf_counter() - started, error="interrupted")
    except UserError as exc:
        return Outcome(job, "failed", time.perf_counter() - started, error=str(exc))
    except Exception as exc:  # the cell's own error; the worker goes on with the next cell
        detail = "".join(traceback.format_exception(exc)[-3:]).strip()
        return Outcome(job, "failed", time.perf_counter() - started, error=f"{exc!r}\n{detail}")
    finally:
        _reset_keras()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if not job.is_cell:
        seconds, output = time.perf_counter() - started, printed.getvalue()
        return Outcome(job, "done", seconds, output=output, worker=worker, peak_rss_mib=peak_rss_mib)
    return Outcome(
        job,
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
