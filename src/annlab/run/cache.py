"""DVC's run cache and lock for `make repro`: a stage restored from the run cache (pulling what
it lacks from the default remote, as `dvc repro --pull` does), a cell trained outside DVC
recorded as `dvc commit` records it, and dvc.lock pruned of stages dvc.yaml no longer has."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from annlab import io


def prune_lock(repo_dir: str | Path = ".", repo: Any = None, index: Any = None) -> list[str]:
    """Drop from dvc.lock the stages that dvc.yaml no longer defines; their names. `index`: the
    repository's DVC index if the caller has it (building it again costs a tenth of a second).

    DVC keeps a stage's entry after the stage leaves dvc.yaml (a grid cell when the grid
    shrinks, every cell of an architecture tried once) and parses them all on every
    `dvc repro`, `dvc status` and `dvc exp run`: 54 such entries made a no-op `dvc repro` do a
    third more work. They describe no output in the workspace; should the stage come back, DVC
    restores its outputs from its run cache without running it, as it would have with the entry.
    """
    from dvc.repo import Repo
    from dvc.utils.serialize import dumps_yaml, parse_yaml_for_update

    from annlab.io import write_text

    with contextlib.ExitStack() as opened:
        if repo is None:
            repo = opened.enter_context(Repo(str(repo_dir)))
        root = Path(repo.root_dir)
        path = root / "dvc.lock"
        if not path.exists():
            return []
        stages = (index or repo.index).stages
        live = {stage.name for stage in stages if Path(stage.dvcfile.path) == root / "dvc.yaml"}
        # A fast read first: the round trip that keeps DVC's layout is for when there is work.
        names = (io.read_yaml(path) or {}).get("stages", {})
        if all(name in live for name in names):
            return []
        with repo.lock:
            lock = parse_yaml_for_update(path.read_text(encoding="utf-8"), str(path))
            entries = lock.get("stages", {})
            stale = [name for name in entries if name not in live]
            for name in stale:
                del entries[name]
            if stale:
                write_text(path, dumps_yaml(lock))  # DVC's own round trip: the rest stays as it was
    return stale


def default_remote(repo: Any) -> str | None:
    """The DVC remote that `dvc push` and `dvc pull` use when none is named, if one is set."""
    return repo.config["core"].get("remote")


def pull_run_cache(repo: Any) -> bool:
    """Fetch the run cache's entries from the default DVC remote, as `dvc repro --pull` does;
    whether there is a remote to pull the cells' outputs from. An unreachable remote is said
    in one line and the cells train, as with no remote."""
    from dvc.exceptions import DvcException

    if not (remote := default_remote(repo)):
        return False
    try:
        repo.stage_cache.pull(None)
    except DvcException as exc:
        print(f"warning: DVC remote {remote!r}: could not pull its run cache ({exc}); going on", flush=True)
        return False
    return True


def restore_from_run_cache(repo: Any, stage_name: str, pull: bool = False) -> bool:
    """Check a stage's outputs out of DVC's run cache and record it, as `dvc repro` would; False
    when the run cache has no run of the stage with these deps and params, or (`pull`: fetching
    what it lacks from the default remote first, as `dvc repro --pull` does) when the cache and
    the remote lack some of that run's outputs.

    As `dvc repro` does, the stale outputs are removed first. The entry is found by the
    stage's deps and params alone, whatever dvc.lock says: a teammate's pushed cell restores
    in a clone of any commit with the same code, data and params (docs/team.md).
    """
    from dvc.exceptions import DvcException
    from dvc.stage.cache import RunCacheNotFoundError

    (stage,) = repo.stage.collect(stage_name)
    with repo.lock:
        # As `Stage.run` does, and no more: `restore` records the deps itself once it knows they
        # changed. Recording them first would make it take dvc.lock's outputs as this run's, and
        # "restore" the stale cell it is asked to replace.
        stage.remove_outs(ignore_remove=False, force=False)
        try:
            repo.stage_cache.restore(stage, pull=pull)
        except RunCacheNotFoundError:
            return False
        except DvcException as exc:  # the remote failed mid-pull: the stage runs instead
            print(f"warning: {stage_name}: could not restore it from the DVC remote ({exc}); running it")
            return False
        stage.save()
        stage.commit()
        stage.dump(update_pipeline=False)
    return True


def commit_cell(repo: Any, stage_name: str) -> None:
    """Record a cell trained outside DVC as `dvc commit` does: dvc.lock, the cache, the run cache."""
    repo.commit(stage_name, force=True)
