"""`make repro`: `dvc repro`, with the grid's stale train cells run JOBS at a time first.

DVC runs one stage at a time, and a cell spends most of its time on one core. The cells are
independent (each reads data/processed and writes its own folders), and DVC lets several
`dvc repro` processes share a repository: it holds its repository lock only between stage
commands and locks each stage's outputs while the command runs. So after the stages upstream
of the grid, the stale cells are dealt to JOBS `dvc repro` processes; a last `dvc repro` then
runs what is left (evaluate, plot, report) and finds the cells done. DVC still decides what is
stale and caches every result: nothing here replaces it.

Last, dvc.lock loses the entries of stages that dvc.yaml no longer has (see `prune_lock`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

GRID_STAGE = "train"  # the matrix stage whose cells run side by side
UPSTREAM = "preprocess"  # the last stage before the grid


def lanes(stages: list[str], jobs: int) -> list[list[str]]:
    """Deal stages round-robin into at most `jobs` non-empty lanes."""
    return [lane for lane in (stages[i::jobs] for i in range(jobs)) if lane]


def prune_lock(repo_dir: str | Path = ".") -> list[str]:
    """Drop from dvc.lock the stages that dvc.yaml no longer defines; their names.

    DVC keeps a stage's entry after the stage leaves dvc.yaml (a grid cell when the grid
    shrinks, every cell of an architecture tried once) and parses them all on every
    `dvc repro`, `dvc status` and `dvc exp run`: 54 such entries made a no-op `dvc repro` do a
    third more work. They describe no output in the workspace; should the stage come back, DVC
    restores its outputs from its run cache without running it, as it would have with the entry.
    """
    from dvc.repo import Repo
    from dvc.utils.serialize import dumps_yaml, parse_yaml_for_update

    from annlab.io import write_text

    with Repo(str(repo_dir)) as repo, repo.lock:
        root = Path(repo.root_dir)
        path = root / "dvc.lock"
        if not path.exists():
            return []
        live = {stage.name for stage in repo.index.stages if Path(stage.dvcfile.path) == root / "dvc.yaml"}
        lock = parse_yaml_for_update(path.read_text(encoding="utf-8"), str(path))
        entries = lock.get("stages", {})
        stale = [name for name in entries if name not in live]
        for name in stale:
            del entries[name]
        if stale:
            write_text(path, dumps_yaml(lock))  # DVC's own round trip: the rest stays as it was
    return stale


def main(argv: list[str] | None = None) -> int:
    """Reproduce the pipeline, running stale grid cells `--jobs` at a time; DVC's exit status."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2, help="cells trained at once (default: %(default)s)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: expected 1 or more")

    from dvc.cli import main as dvc
    from dvc.repo import Repo

    if args.jobs > 1:
        if code := dvc(["repro", UPSTREAM]):
            return code
        with Repo() as repo:
            stale = [name for name in repo.status(targets=[GRID_STAGE]) if name.startswith(f"{GRID_STAGE}@")]
        if len(stale) > 1:
            print(f"repro: {len(stale)} stale cells, {args.jobs} at a time", flush=True)
            # --single-item: the upstream stages are done, and checking them again from two
            # processes would have DVC lock data/processed for writing while a cell reads it.
            command = ["dvc", "--wait-for-lock", "repro", "--single-item"]
            running = [subprocess.Popen([*command, *lane]) for lane in lanes(stale, args.jobs)]
            codes = [proc.wait() for proc in running]
            if any(codes):
                return next(code for code in codes if code)
    if code := dvc(["repro"]):
        return code
    if stale := prune_lock():
        print(f"repro: dvc.lock: dropped {len(stale)} stages dvc.yaml no longer has", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
