"""`make repro`'s upkeep of dvc.lock, on a pipeline of `echo`s (no training)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import dvc, repro

DVC_YAML = """\
stages:
  cell:
    matrix:
      name: ${cells}
    cmd: mkdir -p out && echo ${item.name} > out/${item.name}.txt
    deps:
      - input.txt
    outs:
      - out/${item.name}.txt
"""


def _repo(tmp_path: Path, cells: list[str]) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "input.txt").write_text("a cell's input\n")  # DVC's run cache needs a dependency
    _cells(repo, cells)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q", store=None)
    dvc(repo, "config", "core.analytics", "false", store=None)
    return repo


def _cells(repo: Path, cells: list[str]) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump({"cells": cells}))


def _locked(repo: Path) -> list[str]:
    return list(yaml.safe_load((repo / "dvc.lock").read_text())["stages"])


def _ran(proc: subprocess.CompletedProcess[str]) -> set[str]:
    return {line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")}


@pytest.mark.slow
def test_stages_gone_from_dvc_yaml_leave_dvc_lock_and_come_back_from_the_run_cache(tmp_path: Path) -> None:
    repo = _repo(tmp_path, ["a", "b", "c"])
    assert _ran(repro(repo, 1, store=None)) == {"cell@a", "cell@b", "cell@c"}
    assert _locked(repo) == ["cell@a", "cell@b", "cell@c"]

    _cells(repo, ["a"])
    shrunk = repro(repo, 1, store=None)
    assert "dropped 2 stages" in shrunk.stdout
    assert _locked(repo) == ["cell@a"]
    assert json.loads(dvc(repo, "status", "--json", store=None).stdout) == {}

    # Back in the grid, the cells come from DVC's run cache, not from running them again.
    _cells(repo, ["a", "b", "c"])
    regrown = repro(repo, 1, store=None)
    assert _ran(regrown) == set(), regrown.stdout
    assert (repo / "out/b.txt").read_text() == "b\n"
    assert sorted(_locked(repo)) == ["cell@a", "cell@b", "cell@c"]


@pytest.mark.slow
def test_a_failed_repro_leaves_dvc_lock_alone(tmp_path: Path) -> None:
    repo = _repo(tmp_path, ["a", "b"])
    repro(repo, 1, store=None)
    # `b` leaves the grid and the new cell fails: nothing is pruned, `b` keeps its entry.
    (repo / "dvc.yaml").write_text(DVC_YAML.replace("mkdir -p out", "test ${item.name} != z && mkdir -p out"))
    _cells(repo, ["a", "z"])
    failed = repro(repo, 1, store=None, check=False)
    assert failed.returncode != 0
    assert "cell@b" in _locked(repo)
    assert "dropped" not in failed.stdout


@pytest.mark.slow
def test_a_no_op_on_annlabs_pipeline_still_prunes_what_a_bare_dvc_repro_left(tmp_path: Path) -> None:
    """The no-op path (one `status`, its index reused for the pruning) on a pipeline shaped as
    annlab's: a `preprocess` stage, then the `train` grid."""
    repo = _repo(tmp_path, ["a", "b", "c"])
    upstream = "  preprocess:\n    cmd: cp input.txt seen.txt\n    deps: [input.txt]\n    outs: [seen.txt]\n"
    grid = DVC_YAML.replace("  cell:\n", "  train:\n").replace("- input.txt", "- seen.txt")
    (repo / "dvc.yaml").write_text(grid.replace("stages:\n", "stages:\n" + upstream))
    dvc(repo, "repro", store=None)
    _cells(repo, ["a"])
    dvc(repo, "repro", store=None)  # DVC keeps the entries of train@b and train@c
    assert _locked(repo) == ["preprocess", "train@a", "train@b", "train@c"]

    noop = repro(repo, 1, store=None)
    assert "every stage is up to date" in noop.stdout
    assert "dropped 2 stages" in noop.stdout
    assert _locked(repo) == ["preprocess", "train@a"]
    assert json.loads(dvc(repo, "status", "--json", store=None).stdout) == {}
