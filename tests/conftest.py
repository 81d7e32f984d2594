"""Shared fixtures: MLflow always points at a temporary store, never the user's."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(autouse=True)
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite tracking store per test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return uri


def dvc(repo: Path, *args: str, store: str | None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `dvc` in `repo` as `make` would: this interpreter's bin first on PATH (stages and
    queue workers call `python` and `dvc` by name). `store`: the MLFLOW_TRACKING_URI the
    stages get; None leaves it unset, so they use the default store at the repo root."""
    return _run(repo, [str(Path(sys.executable).parent / "dvc"), *args], store, check)


def repro(repo: Path, jobs: int, store: str | None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the pipeline as `make repro JOBS=<jobs>` does (after its params check)."""
    return _run(repo, [sys.executable, "-m", "annlab.run.repro", "--jobs", str(jobs)], store, check)


def _run(repo: Path, argv: list[str], store: str | None, check: bool) -> subprocess.CompletedProcess[str]:
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": "src",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    if store is not None:
        env["MLFLOW_TRACKING_URI"] = store
    proc = subprocess.run(argv, cwd=repo, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv[-3:])} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def default_sigint() -> None:
    """For `preexec_fn`: the child takes SIGINT as a terminal's Ctrl-C would reach it, even when
    the tests run as a background job (whose children inherit SIGINT ignored, and keep it so)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def small_repo(repo: Path, edit: Callable[[dict[str, Any]], None]) -> str:
    """A git + DVC copy of the project in `repo` with params.yaml untuned and then changed by
    `edit`; its commit."""
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    # data.path's default, a dependency of validate and fetch
    shutil.copytree(REPO / "data/own", repo / "data/own", dirs_exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    # One run per seed at each optimizer's own rate, as before tuning: the end-to-end tests of
    # executors, faults, teams and sweeps test those; a test of tuning turns it on in `edit`.
    params["tuning"] = None
    params["train"]["checkpoint"] = "last"
    edit(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=annlab-test", "-c", "user.email=test@annlab.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q", store=None)
    dvc(repo, "config", "core.analytics", "false", store=None)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "small pipeline"], cwd=repo, check=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


def processed_blobs(directory: Path, *, scale: float = 1.0, n_train: int = 90) -> None:
    """Three Gaussian blobs in 8 features (images of 2x4), multiplied by `scale`, saved as
    preprocess would save them (30 validation and 30 test samples)."""
    import numpy as np

    from annlab import io

    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, size=(3, 8))
    arrays = {}
    for split, n in (("train", n_train), ("val", 30), ("test", 30)):
        y = np.arange(n) % 3
        arrays[f"x_{split}"] = ((centers[y] + rng.normal(0, 1, size=(n, 8))) * scale).astype(np.float32)
        arrays[f"y_{split}"] = y.astype(np.int64)
    io.save_arrays(directory, arrays)
    info = {"dataset": "digits", "kind": "images", "class_names": ["a", "b", "c"], "input_shape": [2, 4]}
    io.write_json(directory / "dataset.json", {**info, "input_dtype": "float32", "sizes": {"test": 30}})
    # The arrays are the inputs as they are: an identity scaler.
    identity = {"kind": "none", "shift": [0.0] * 8, "scale": [1.0] * 8}
    io.write_json(directory / "preprocessing.json", {"kind": "array", "scaler": identity})


# `make test` runs the tests on pytest-xdist workers with `--dist loadfile`: each file whole on
# one worker, so a module fixture (a trained grid) is built once. These files share no fixture
# between their tests, and some of those take minutes: their tests are dealt out one by one.
SPREAD_FILES = {"tests/test_faults.py"}


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile`, but with the tests of SPREAD_FILES each a unit of its own."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ByFile(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return nodeid if path in SPREAD_FILES else path

    return ByFile(config, log)


@contextlib.contextmanager
def one_ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Held while a test's own Ray head runs. `make test` runs tests on several workers
    (pytest-xdist); two Ray clusters on one machine would share Ray's default ports (the
    dashboard agent's 52365, the workers' 10002-19999) and its /tmp/ray sessions."""
    shared = tmp_path_factory.getbasetemp().parent  # the same folder for every worker of a run
    with FileLock(shared / "ray-cluster.lock"):
        yield


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
