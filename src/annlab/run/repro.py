"""`make repro`: `dvc repro`, with the grid's stale cells trained on warm workers first.

After the stages upstream of the grid, each stale cell is first looked up in DVC's run cache
(a teammate's push, an earlier grid) and checked out if there; the rest go to an executor:
warm local worker processes (`annlab.run.local`), or a Ray cluster when RAY_ADDRESS is set
(`annlab.run.ray`). Local workers start before the upstream stages run, so that their imports
overlap them, and once the cells are done one of them runs the stale stages after the grid
(evaluate, plot, report); with Ray, one local worker is started for those stages alone. Each
finished cell or stage is recorded as `dvc commit` records it (dvc.lock, the cache and the run
cache), so DVC stays the source of truth: a last `dvc repro` runs what is left, if anything.
`--executor dvc` deals the cells to JOBS cold `dvc repro` processes instead, as before the
executor.

Last, dvc.lock loses the entries of stages that dvc.yaml no longer has (see `prune_lock`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annlab import io
from annlab.run.cache import (
    commit_cell,
    default_remote,
    prune_lock,
    pull_run_cache,
    restore_from_run_cache,
)

if TYPE_CHECKING:
    from annlab.run.cell import Job, Outcome

GRID_STAGE = "train"  # the matrix stage whose cells run side by side
UPSTREAM = "preprocess"  # the last stage before the grid
DATA_DIR = "data/processed"  # what the cells read (dvc.yaml: train's deps), shipped to Ray once
PARAMS = "params.yaml"
RAY_ADDRESS_ENV = "RAY_ADDRESS"


def lanes(stages: list[str], jobs: int) -> list[list[str]]:
    """Deal stages round-robin into at most `jobs` non-empty lanes."""
    return [lane for lane in (stages[i::jobs] for i in range(jobs)) if lane]


def stale_cells(repo: Any) -> list[Job]:
    """The grid's cells whose DVC stage is not up to date, in dvc.yaml's order."""
    from annlab.run.cell import cell_from_command

    changed = set(repo.status(targets=[GRID_STAGE]))
    return [
        cell_from_command(stage.addressing, stage.cmd)
        for stage in repo.stage.collect(GRID_STAGE)
        if stage.addressing in changed
    ]


class StopRequests:
    """Counts SIGINT / SIGTERM while the cells run, instead of raising: the executor asks each
    worker to stop after its step at the first, at once at the second."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> int:
        return self.count

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        def on_signal(signum: int, frame: Any) -> None:
            self.count += 1
            how = "after their current step" if self.count == 1 else "now"
            print(f"\n{signal.Signals(signum).name}: stopping the workers {how}", file=sys.stderr, flush=True)

        before = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)


def on_ray(kind: str) -> bool:
    """Whether the executor `kind` runs the cells on Ray (`auto`: when RAY_ADDRESS is set)."""
    return kind == "ray" or (kind == "auto" and bool(os.environ.get(RAY_ADDRESS_ENV, "").strip()))


def make_executor(kind: str, jobs: int) -> Any:
    """The executor `kind` names (`auto`: Ray when RAY_ADDRESS is set, local processes otherwise)."""
    from annlab.run.local import LocalExecutor
    from annlab.run.ray import RayExecutor

    if on_ray(kind):
        address = os.environ.get(RAY_ADDRESS_ENV, "").strip() or "auto"
        executor = RayExecutor(address, Path(DATA_DIR), Path(PARAMS))
        executor.connect()
        return executor
    return LocalExecutor(jobs)


def record_stats(outcome: Outcome) -> None:
    """For `make bench` (ANNLAB_STAGE_STATS set): a trained cell's seconds, its training's, and
    its worker's peak memory, as the stages write theirs."""
    from annlab.runtime import STATS_ENV

    if path := os.environ.get(STATS_ENV):
        line = {
            "stage": outcome.job.stage,
            "seconds": outcome.seconds,
            "train_seconds": outcome.train_seconds,
            "peak_rss_mib": outcome.peak_rss_mib,
            "worker": outcome.worker,
        }
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")


def cell_line(n: int, total: int, outcome: Outcome, width: int) -> str:
    """One line of progress: `[3/9] ann-adam-relu  val 0.9694  4.1 s`, or the failure."""
    head = f"[{n}/{total}] {outcome.job.name:<{width}}"
    if outcome.status == "trained":
        val = "diverged" if outcome.val_accuracy is None else f"val {outcome.val_accuracy:.4f}"
        return f"{head}  {val}  {outcome.seconds:.1f} s"
    if outcome.status == "interrupted":
        return f"{head}  interrupted ({outcome.error})"
    first, *rest = outcome.error.splitlines() or [""]
    return "\n".join([f"{head}  FAILED: {first}", *(f"    {line}" for line in rest)])


def run_cells(kind: str, jobs: int, warm: Any = None) -> int:
    """Restore or train the stale cells, recording each with DVC; 0, 1 (a cell or stage
    failed) or 130. Then, on a local worker still warm, the stale stages after the grid.

    `warm`: local workers `early_workers` started (on Ray, the one for the stages after the
    grid); closed unused if nothing is left to run."""
    from dvc.repo import Repo

    with Repo() as repo:
        stale = stale_cells(repo)
        width = max((len(cell.name) for cell in stale), default=0)
        restored = []
        pull = bool(stale) and pull_run_cache(repo)
        for cell in stale:
            if restore_from_run_cache(repo, cell.stage, pull):
                restored.append(cell)
                head = f"[{len(restored)}/{len(stale)}] {cell.name:<{width}}"
                print(f"{head}  restored from the run cache", flush=True)
    todo = [cell for cell in stale if cell not in restored]
    if warm is not None and not todo and not stages_after_are_stale():
        warm.close()  # nothing for them to do (still warming up: stopped at once)
        warm = None
    counts = {"trained": 0, "failed": 0, "interrupted": 0}
    stages = {"failed": 0, "interrupted": 0}  # of those after the grid
    if todo or warm is not None:
        stop = StopRequests()
        if on_ray(kind):  # the cells on the cluster, the stages after them on the local worker
            cells_on = make_executor(kind, len(todo)) if todo else None
        else:
            cells_on = warm = warm or make_executor(kind, min(jobs, len(todo)))
        if cells_on is not None:
            print(cells_on.describe(), flush=True)
        with stop.installed(), Repo() as repo:
            after = StagesAfter(
                repo, lambda: counts["failed"] + counts["interrupted"] + sum(stages.values()), stop
            )
            for outcome in _outcomes(cells_on, warm, todo, stop, after):
                if not outcome.job.is_cell:
                    if outcome.status == "done":
                        commit_cell(repo, outcome.job.stage)
                        record_stats(outcome)
                        print(outcome.output, end="", flush=True)
                    else:
                        stages[outcome.status] += 1
                        print(
                            f"{outcome.job.stage}: {outcome.status}: {outcome.error}",
                            file=sys.stderr,
                            flush=True,
                        )
                    continue
                if outcome.status == "trained":
                    commit_cell(repo, outcome.job.stage)
                    record_stats(outcome)
                counts[outcome.status] += 1
                n = len(restored) + sum(counts.values())
                failed = outcome.status == "failed"
                print(
                    cell_line(n, len(stale), outcome, width),
                    file=sys.stderr if failed else sys.stdout,
                    flush=True,
                )
        if stop():
            counts["interrupted"] += len(todo) - sum(counts.values())
    summary = f"trained {counts['trained']}, restored {len(restored)} from cache, failed {counts['failed']}"
    if counts["interrupted"]:
        summary += f", interrupted {counts['interrupted']} (the next `make repro` trains them)"
    print(summary, flush=True)
    if counts["interrupted"] or stages["interrupted"]:
        return 130
    return 1 if counts["failed"] or stages["failed"] else 0


def _outcomes(
    cells_on: Any, after_on: Any, todo: list[Job], stop: StopRequests, after: Any
) -> Iterator[Outcome]:
    """What becomes of each cell on `cells_on`, then of each stage after the grid on `after_on`
    (local workers: often the same executor, which goes from one to the other warm)."""
    if cells_on is not None and cells_on is after_on:
        yield from cells_on.run(todo, stop, after)
        return
    if cells_on is not None:
        yield from cells_on.run(todo, stop)
    if after_on is not None:
        yield from after_on.run([], stop, after)


def stages_after_are_stale() -> bool:
    """Whether DVC finds any stage after the grid out of date now."""
    from dvc.repo import Repo

    with Repo() as repo:
        return bool(repo.status(targets=around_grid()[1]))


class StagesAfter:
    """The stages after the grid, for a warm worker to run once every cell is recorded: each
    that DVC finds stale at its turn (earlier ones change later ones' deps), in dvc.yaml's
    order, unless a cell failed or a stop was asked. As `dvc repro` would, each is first looked
    up in the run cache. Stages whose command is not an annlab stage module, and all those after
    one, are left to the final `dvc repro`."""

    def __init__(self, repo: Any, failed: Callable[[], int], stop: StopRequests) -> None:
        from annlab.run.cell import stage_from_command

        self.repo, self.stop = repo, stop
        self.failed = failed  # how many cells or stages failed or were interrupted so far
        self.pending: list[Job] = []
        for name in around_grid()[1]:
            found = repo.stage.collect(name)
            job = stage_from_command(name, found[0].cmd) if len(found) == 1 else None
            if job is None:
                break
            self.pending.append(job)

    def __call__(self) -> Job | None:
        while self.pending and not (self.failed() or self.stop()):
            job = self.pending.pop(0)
            if not (status := self.repo.status(targets=[job.stage])):
                continue
            if missing_deps(status):  # `dvc repro` names them
                self.pending.clear()
                return None
            if restore_from_run_cache(self.repo, job.stage):
                print(f"Stage '{job.stage}' restored from the run cache", flush=True)
                continue
            print(f"Running stage '{job.stage}' on a warm worker:", flush=True)
            return job
        return None


def main(argv: list[str] | None = None) -> int:
    """Reproduce the pipeline, the stale grid cells on warm workers; 0 when all went well."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2, help="local workers (default: %(default)s)")
    p.add_argument(
        "--executor",
        choices=["auto", "local", "ray", "dvc"],
        default="auto",
        help="where the stale cells run: auto (ray when RAY_ADDRESS is set, else local), local"
        " worker processes, a ray cluster, or dvc (JOBS cold `dvc repro` processes)",
    )
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: expected 1 or more")

    from annlab.errors import UserError

    if not has_grid(Path("dvc.yaml")):  # not annlab's pipeline: nothing for an executor
        return dvc(["repro"]) or _pruned()
    from dvc.repo import Repo, lock_repo

    with Repo() as repo:
        # One status for the whole pipeline, not a repro of each part. Under one lock, so that
        # the index it builds stays for prune_lock: DVC drops it as it unlocks.
        with lock_repo(repo):
            stale = repo.status()
            index = repo.index
        if not stale:
            print("trained 0, restored 0 from cache, failed 0: every stage is up to date", flush=True)
            return _pruned(repo, index)
    if missing := missing_data():
        print(f"error: {missing}", file=sys.stderr)
        return 2
    warm = early_workers(args.executor, args.jobs, stale)
    try:
        if code := dvc(["repro", UPSTREAM]):
            return code
        if args.executor == "dvc":
            if code := cold_cells(args.jobs):
                return code
        else:
            try:
                code = run_cells(args.executor, args.jobs, warm)
            except UserError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            if code:
                return code
    finally:
        if warm is not None:
            warm.close()  # a no-op once the cells have run
    if code := dvc(["repro"]):
        return code
    return _pruned()


def dvc(argv: list[str]) -> int:
    """DVC's command line, in this process (imported when needed: a no-op never is)."""
    from dvc.cli import main

    return main(argv)


def _pruned(repo: Any = None, index: Any = None) -> int:
    if stale := prune_lock(repo=repo, index=index):
        print(f"repro: dvc.lock: dropped {len(stale)} stages dvc.yaml no longer has", flush=True)
    return 0


def missing_data() -> str | None:
    """What is wrong when params.yaml names own data that is not there (DVC would only say
    "missing dependency"); None otherwise, bad params included: `validate` reports those."""
    from annlab.errors import ParamsError
    from annlab.params import load_params

    try:
        data = load_params(PARAMS).data
    except ParamsError:
        return None
    if data.builtin or Path(data.path).exists():
        return None
    what = "a folder with one subfolder per class" if data.dataset == "images" else f"a {data.dataset} file"
    return f"{PARAMS}: data.path: {data.path} does not exist; data.dataset {data.dataset} reads {what}"


def missing_deps(status: dict[str, Any]) -> list[str]:
    """The dependencies `dvc status` says are gone (a missing output of an upstream stage, a
    deleted input); the outputs that are gone do not count, the stage rewrites them."""
    return [
        path
        for entries in status.values()
        for entry in entries
        if isinstance(entry, dict)
        for path, state in entry.get("changed deps", {}).items()
        if state == "deleted"
    ]


def early_workers(kind: str, jobs: int, stale: dict[str, Any]) -> Any:
    """Local workers started before the stages upstream of the grid run, so that their imports
    (TensorFlow, MLflow: several seconds) overlap those stages' work: JOBS of them, or with Ray
    one, for the stages after the grid (they write this workspace and its MLflow store, which
    the cluster cannot reach). None for the cold `dvc` executor, or when only stages after the
    grid are stale (no cell to train: a worker's imports would cost what a cold stage's do)."""
    from annlab.run.local import LocalExecutor

    if kind == "dvc":
        return None
    before, _ = around_grid()
    if not any(name.startswith(f"{GRID_STAGE}@") or name in before for name in stale):
        return None
    executor = LocalExecutor(1 if on_ray(kind) else jobs)
    executor.start()
    return executor


def around_grid() -> tuple[list[str], list[str]]:
    """The stages dvc.yaml lists before the grid's, and after it (annlab's lists them in the
    order they run)."""
    order = list(io.read_yaml("dvc.yaml")["stages"])
    at = order.index(GRID_STAGE)
    return order[:at], order[at + 1 :]


def has_grid(dvc_yaml: Path) -> bool:
    """Whether the pipeline has the grid stage and the stage before it (annlab's does)."""
    import yaml

    try:
        stages = io.read_yaml(dvc_yaml).get("stages", {})
    except (OSError, AttributeError, yaml.YAMLError):
        return False
    return GRID_STAGE in stages and UPSTREAM in stages


def cold_cells(jobs: int) -> int:
    """The stale cells dealt to `jobs` cold `dvc repro` processes; the first failure's status."""
    from dvc.repo import Repo

    with Repo() as repo:
        stale = [name for name in repo.status(targets=[GRID_STAGE]) if name.startswith(f"{GRID_STAGE}@")]
        remote = default_remote(repo)
    if len(stale) > 1 and jobs > 1:
        print(f"repro: {len(stale)} stale cells, {jobs} at a time", flush=True)
        # --single-item: the upstream stages are done, and checking them again from two
        # processes would have DVC lock data/processed for writing while a cell reads it.
        # --pull: a cell in the remote's run cache is checked out from there, not trained.
        command = ["dvc", "--wait-for-lock", "repro", "--single-item", *(["--pull"] if remote else [])]
        running = [subprocess.Popen([*command, *lane]) for lane in lanes(stale, jobs)]
        codes = [proc.wait() for proc in running]
        return next((code for code in codes if code), 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
