"""What every stage's entry point shares: the params file, and user errors without tracebacks."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from annlab.errors import Interrupted, UserError

# When set (by `make bench`), each stage DVC runs appends a JSON line here: its name, the
# seconds its main took and its peak resident memory.
STATS_ENV = "ANNLAB_STAGE_STATS"


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the --params option every stage takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="the params file (default: %(default)s)")
    return p


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a stage's main; a user's mistake prints one clear message and exits with 2.

    SIGINT (Ctrl-C) and SIGTERM (what `kill` and job schedulers send) unwind the stage: its
    outputs are written whole or not at all, its MLflow run ends as KILLED, and it exits with
    128 + the signal's number, as a shell reports a killed command.

    Training defers them to the end of its current step (`deferred_stop`).

    A stage exits without tearing the interpreter down: with TensorFlow loaded that teardown
    takes 1.3 s and does nothing for us (every output is written and closed, or removed).
    """
    started = time.perf_counter()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before any stage imports TensorFlow
    handle_stop_signals()
    try:
        main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        _exit(2)
    except (KeyboardInterrupt, Interrupted) as exc:
        signum = signal.SIGTERM if isinstance(exc, Interrupted) else signal.SIGINT
        stage = os.environ.get("DVC_STAGE", "the stage")
        print(
            f"interrupted ({signum.name}): {stage} stopped before writing its outputs;"
            " `dvc repro` runs it again",
            file=sys.stderr,
        )
        _exit(128 + signum)
    if os.environ.get(STATS_ENV) and os.environ.get("DVC_STAGE"):
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        stage = os.environ["DVC_STAGE"]
        line = {"stage": stage, "seconds": time.perf_counter() - started, "peak_rss_mib": peak_kib / 1024}
        with open(os.environ[STATS_ENV], "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
    _exit(0)


class _Signals:
    """The signal a deferred stop is waiting on (None: none came), and whether stops are deferred."""

    deferring = False
    pending: signal.Signals | None = None


def handle_stop_signals() -> None:
    """Install annlab's handlers: SIGINT raises KeyboardInterrupt and SIGTERM `Interrupted`, or,
    within `deferred_stop`, only asks to stop. A SIGINT the process was started ignoring (a
    background job's) stays ignored."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def _raise_for(signum: signal.Signals) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(signum.name)


def _on_signal(signum: int, frame: Any) -> None:
    sig = signal.Signals(signum)
    if not _Signals.deferring or _Signals.pending is not None:
        _raise_for(sig)  # outside training, or asked twice: stop now
    _Signals.pending = sig
    os.write(2, f"\n{sig.name}: stopping after this training step (send it again to stop now)\n".encode())


def stop_requested() -> bool:
    """Whether a signal asked the stage to stop while stops were deferred."""
    return _Signals.pending is not None


@contextlib.contextmanager
def deferred_stop() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM only ask to stop (see `stop_requested`); it raises
    at its end, as the signal would have.

    An exception thrown into TensorFlow while it trains (its input pipeline's threads running)
    now and then corrupts its heap, and the process aborts before it can clean up. Training
    polls `stop_requested` between steps and ends the way early stopping does.
    """
    _Signals.pending = None
    _Signals.deferring = True
    try:
        yield
    finally:
        _Signals.deferring = False
        pending, _Signals.pending = _Signals.pending, None
    if pending is not None:
        _raise_for(pending)


def _exit(code: int) -> None:
    """Flush what was printed, then end the process at once (no interpreter teardown)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
