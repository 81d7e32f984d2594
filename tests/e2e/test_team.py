"""End to end: a teammate's pushed cells restore from the DVC run cache alone (docs/team.md), in
a fresh clone whose dvc.lock knows nothing of them; a remote that lacks a cell's objects trains
that cell only; no remote, no pull."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import dvc, repro, small_repo

pytestmark = pytest.mark.slow

SUMMARY = re.compile(r"^trained (\d+), restored (\d+) from cache, failed (\d+)", re.MULTILINE)
GIT = ["git", "-c", "user.name=annlab-test", "-c", "user.email=test@annlab.invalid"]
# What a teammate's clone must reproduce exactly: the tables, the per-seed evaluations and
# the cells' histories and learning-rate trials (models differ only in Keras' dated zip and
# wall-clock timings).
SAME = (
    "reports/comparison.csv",
    "reports/summary.json",
    "reports/eval",
    "reports/metrics",
    "reports/history",
    "reports/tuning",
)


def _edit(params: dict) -> None:
    params["data"]["subset"] = 300
    params["train"]["epochs"] = 2
    # tuned, so that a restored cell brings its trials too
    params["tuning"] = {
        "learning_rates": {"sgd": [0.01, 0.1], "adam": None},
        "select_on": "val_accuracy",
        "seed": None,
    }
    params["grid"] = {"model": ["ann"], "optimizer": ["sgd", "adam"], "activation": ["relu", "tanh"]}
    params["grid"]["seeds"] = [1, 2]


def _summary(proc: subprocess.CompletedProcess[str]) -> tuple[int, int, int]:
    found = SUMMARY.search(proc.stdout)
    assert found, proc.stdout + proc.stderr
    return int(found[1]), int(found[2]), int(found[3])


def _store(repo: Path) -> str:
    return f"sqlite:///{repo / 'mlflow.db'}"


def _files(repo: Path) -> dict[str, bytes]:
    files = {}
    for top in SAME:
        path = repo / top
        for f in sorted([path] if path.is_file() else path.rglob("*")):
            if f.is_file() and f.name != ".gitignore":
                files[str(f.relative_to(repo))] = f.read_bytes()
    return files


def _clone(origin: Path, to: Path, remote: Path | None) -> Path:
    """A fresh clone of `origin`'s last commit, with `remote` as its default DVC remote."""
    subprocess.run(["git", "clone", "-q", str(origin), str(to)], check=True)
    if remote is not None:
        dvc(to, "remote", "add", "-d", "-f", "team", str(remote), store=None)
    return to


def _set_activations(repo: Path, activations: list[str]) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["grid"]["activation"] = activations
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Clone A of a small pipeline trains its grid and pushes with the run cache, as docs/team.md
    says, and commits nothing: the remote holds the cells, git only the commit before them."""
    root = tmp_path_factory.mktemp("team")
    a, remote = root / "a", root / "remote"
    a.mkdir()
    small_repo(a, _edit)
    dvc(a, "remote", "add", "-d", "team", str(remote), store=None)
    subprocess.run([*GIT, "commit", "-qam", "a DVC remote for the team"], cwd=a, check=True)
    assert _summary(repro(a, 2, _store(a))) == (4, 0, 0)
    dvc(a, "push", "--run-cache", store=None)
    assert subprocess.run(["git", "status", "--porcelain"], cwd=a, capture_output=True, text=True).stdout
    return {"root": root, "a": a, "remote": remote}


def test_a_fresh_clone_restores_every_pushed_cell_without_the_lock(team: dict[str, Path]) -> None:
    b = _clone(team["a"], team["root"] / "b", None)  # the remote's config came with the commit
    dvc(
        b, "pull", "--run-cache", store=None, check=False
    )  # the documented step; dvc.lock's outputs are not there
    proc = repro(b, 2, _store(b))
    assert _summary(proc) == (0, 4, 0)
    assert _files(b) == _files(team["a"])


def test_make_repro_alone_pulls_what_it_needs(team: dict[str, Path]) -> None:
    b = _clone(team["a"], team["root"] / "b-alone", None)
    assert _summary(repro(b, 2, _store(b))) == (0, 4, 0)
    assert _files(b) == _files(team["a"])


def test_a_remote_lacking_a_cells_objects_trains_that_cell_and_restores_the_rest(
    team: dict[str, Path],
) -> None:
    partial = team["root"] / "partial-remote"
    shutil.copytree(team["remote"], partial)
    lock = yaml.safe_load((team["a"] / "dvc.lock").read_text())["stages"]
    (model_out,) = [o for o in lock["train@ann-sgd-relu"]["outs"] if o["path"].startswith("models/")]
    digest = model_out["md5"].removesuffix(".dir")
    removed = list(partial.rglob(f"{digest[2:]}.dir"))
    assert removed, "the cell's model folder is not on the remote"
    for path in removed:
        path.unlink()
    b = _clone(team["a"], team["root"] / "b-partial", partial)
    proc = repro(b, 2, _store(b))
    assert _summary(proc) == (1, 3, 0)
    restored = [
        line.split()[1] for line in proc.stdout.splitlines() if line.endswith("restored from the run cache")
    ]
    assert sorted(restored) == ["ann-adam-relu", "ann-adam-tanh", "ann-sgd-tanh"]
    assert _files(b) == _files(team["a"])


def test_without_a_remote_nothing_is_pulled_and_every_cell_trains(team: dict[str, Path]) -> None:
    b = _clone(team["a"], team["root"] / "b-alone-no-remote", None)
    dvc(b, "remote", "remove", "team", store=None)
    proc = repro(b, 2, _store(b))
    assert _summary(proc) == (4, 0, 0)
    assert "run cache" not in proc.stdout
    assert _files(b) == _files(team["a"])


def test_a_cell_trained_in_an_experiment_restores_where_its_activation_is_added(
    team: dict[str, Path],
) -> None:
    a = team["a"]
    # A tries a third activation in an experiment and pushes what it trained.
    dvc(a, "exp", "run", "-S", "grid.activation=[relu,tanh,sigmoid]", store=_store(a))
    dvc(a, "push", "--run-cache", store=None)
    b = _clone(a, team["root"] / "b-exp", None)
    _set_activations(b, ["relu", "tanh", "sigmoid"])
    proc = repro(b, 2, _store(b))
    assert _summary(proc) == (0, 6, 0)
    for cell in ("ann-sgd-sigmoid", "ann-adam-sigmoid"):
        ours, theirs = b / "reports/history" / cell, a / "reports/history" / cell
        assert sorted(p.read_bytes() for p in ours.glob("*.csv")) == sorted(
            p.read_bytes() for p in theirs.glob("*.csv")
        )
