"""Warm worker processes on this machine (`LocalExecutor`), the executor `make repro` uses by default.

JOBS worker processes import TensorFlow and MLflow once, then train the grid's cells in turn
(`annlab.run.cell.train_cell`). They log to MLflow as the stage does and write their outputs
into the workspace. A worker that dies (SIGKILL, out of memory) is replaced, and its cell
retried once. Once the cells are done, a worker runs the stages after the grid the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annlab.errors import Interrupted
from annlab.run.cell import Job, Outcome, train_cell, warm_up


def _watch_parent() -> None:
    """End this worker when the driver is gone (killed outright, so it could not say so)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _local_worker(conn: Any) -> None:
    """A worker's life: warm up, then run the jobs the driver sends until it sends None."""
    from annlab import runtime

    os.setpgrp()  # Ctrl-C reaches the driver only, which asks each worker to stop exactly once
    _watch_parent()
    runtime.handle_stop_signals()
    try:
        warm_up()
        conn.send(("ready", os.getpid()))
        while (job := conn.recv()) is not None:
            outcome = train_cell(job)
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
    job: Job | None = None
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
        """Where the cells run, for the driver's first line."""
        return f"executor: local, {self.jobs} worker{'s' if self.jobs != 1 else ''}"

    def run(
        self, cells: list[Job], stop: Callable[[], int], after: Callable[[], Job | None] | None = None
    ) -> Iterator[Outcome]:
        """Train `cells`, yielding each outcome as it comes. `stop()` counts the stop requests
        (Ctrl-C) so far: at the first, no cell starts and each worker is asked to stop after its
        step; at the second, to stop at once.

        `after()`: the next stage after the grid, asked for once every cell is done and the
        last outcome handled (the driver records it first), until it returns None. A warm
        worker runs it, which spares that stage's imports; the workers wait for it meanwhile."""
        from multiprocessing.connection import wait

        queue: deque[Job] = deque(cells)
        tries: dict[str, int] = {}
        workers = self.workers  # those `start` began, if it was called
        signalled = 0
        spares = self.jobs + len(cells)  # workers started beyond the first JOBS, at most
        spawn = self._spawn

        def handle(w: _Worker, message: Any) -> Outcome | None:
            if isinstance(message, tuple) and message[0] == "ready":
                w.ready = True
                return None
            w.job = None
            return message

        def dispatch() -> None:
            nonlocal after
            busy = any(w.job is not None for w in workers)
            for w in workers:
                if not w.ready or w.job is not None or w.closed:
                    continue
                if not queue and not busy and after is not None and not signalled:
                    if (job := after()) is None:
                        after = None
                    else:
                        queue.append(job)
                if queue and not signalled:
                    w.job = queue.popleft()
                    tries[w.job.stage] = tries.get(w.job.stage, 0) + 1
                    w.conn.send(w.job)
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
                    if w.job is not None:
                        if w.job.is_cell:
                            _clean_partial_outputs(w.job)
                        died = f"its worker died ({_exit_reason(w.process.exitcode)})"
                        if tries[w.job.stage] < 2 and not signalled:
                            print(f"{w.job.name}: {died}; retrying it on a fresh worker", flush=True)
                            queue.appendleft(w.job)
                        else:
                            yield Outcome(w.job, "interrupted" if signalled else "failed", error=died)
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


def _clean_partial_outputs(job: Job) -> None:
    """Remove the temporary siblings a killed worker left (`io.atomic_path` names them `.<name>.*`)."""
    import shutil

    for out in job.outputs:
        path = Path(out)
        for tmp in path.parent.glob(f".{path.name}.*"):
            shutil.rmtree(tmp, ignore_errors=True)
