"""`make repro`'s executor end to end: warm local workers and a real Ray cluster give the bits of a
cold `dvc repro`, record each cell as DVC would, survive a failing cell, a killed worker and
Ctrl-C, and a teammate who pulls from a DVC remote trains nothing."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from annlab import io
from annlab.errors import UserError
from annlab.run import ray as ray_executor
from annlab.run.cell import cell_from_command
from annlab.run.ray import ray_resources, version_mismatch
from annlab.track import store
from conftest import dvc, free_port, one_ray_cluster, repro, small_repo

CELLS = ["ann-sgd-relu", "ann-sgd-tanh", "ann-adam-relu", "ann-adam-tanh"]
SUMMARY = re.compile(r"^trained (\d+), restored (\d+) from cache, failed (\d+)", re.MULTILINE)
# Ray puts every process on loopback (127.0.0.1) instead of the machine's first interface.
RAY_LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _small(epochs: int = 2) -> object:
    def edit(params: dict) -> None:
        params["data"]["subset"] = 300
        params["train"]["epochs"] = epochs
        params["grid"] = {"model": ["ann"], "optimizer": ["sgd", "adam"], "activation": ["relu", "tanh"]}
        params["grid"]["seeds"] = None

    return edit


def _store(repo: Path) -> str:
    return f"sqlite:///{repo / 'mlflow.db'}"


def _summary(proc: subprocess.CompletedProcess[str] | str) -> tuple[int, int, int]:
    text = proc if isinstance(proc, str) else proc.stdout
    m = SUMMARY.search(text)
    assert m, text
    return int(m[1]), int(m[2]), int(m[3])


def _status(repo: Path) -> dict:
    return json.loads(dvc(repo, "status", "--json", store=_store(repo)).stdout)


def _results(repo: Path) -> dict[str, bytes]:
    """What must not depend on where a cell trained: histories, metrics, per-seed evaluations,
    predictions, and every model file but its wall-clock timing and Keras' dated zip."""
    files = {}
    for top in ("reports/history", "reports/metrics", "reports/eval", "reports/predictions", "models"):
        for path in sorted((repo / top).rglob("*")):
            # (DVC's .gitignore lists the cells in the order they were recorded)
            if path.is_file() and path.name not in ("timing.json", "model.keras", ".gitignore"):
                files[str(path.relative_to(repo))] = path.read_bytes()
    return files


def _weights(repo: Path) -> dict[str, list]:
    import keras

    return {
        cell: [
            w.tolist()
            for w in keras.saving.load_model(repo / f"models/{cell}/seed-42/model.keras").get_weights()
        ]
        for cell in CELLS
    }


def _lock_entries(repo: Path) -> dict:
    """dvc.lock's cell entries, with the models folder's hash set apart (see _results)."""
    stages = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    entries = {}
    for name, entry in stages.items():
        if name.startswith("train@"):
            masked = {"md5": "-", "size": "-"}
            outs = [{**o, **masked} if o["path"].startswith("models/") else o for o in entry["outs"]]
            entries[name] = {
                "cmd": entry["cmd"],
                "deps": entry["deps"],
                "params": entry["params"],
                "outs": outs,
            }
    return entries


def _runs(repo: Path) -> list[Run]:
    """The cell runs in the repo's MLflow store."""
    client = MlflowClient(_store(repo))
    runs = client.search_runs([client.get_experiment_by_name("annlab").experiment_id])
    return [r for r in runs if r.data.tags.get("annlab.role") == "final"]


def _cell_runs(repo: Path) -> list[str]:
    """The names of the cell runs in the repo's MLflow store, sorted (one per cell when none is doubled)."""
    return sorted(r.info.run_name for r in _runs(repo))


def _running_runs(repo: Path) -> int:
    """How many runs are RUNNING in the repo's store (its grid's and the cells' being trained);
    read only, so nothing is made in a store that a worker is about to make."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{repo / 'mlflow.db'}?mode=ro", uri=True)) as db:
            return db.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]
    except sqlite3.Error:
        return 0  # not made yet


def _killed_run_is_superseded(repo: Path) -> None:
    """One finished run per cell; the run of the cell whose worker was killed mid-cell is
    marked FAILED, replaced by its retry's."""
    runs = _runs(repo)
    finished = {r.info.run_name: r.info.run_id for r in runs if r.info.status == "FINISHED"}
    assert sorted(finished) == sorted(CELLS)  # one each
    killed = [r for r in runs if r.info.run_id not in finished.values()]
    assert len(killed) == 1, [(r.info.run_name, r.info.status) for r in runs]
    (run,) = killed
    assert run.info.status == "FAILED"
    assert run.data.tags["annlab.superseded_by"] == finished[run.info.run_name]


def _popen(repo: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    bin_dir = str(Path(sys.executable).parent)
    full = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": "src",
        "MLFLOW_TRACKING_URI": _store(repo),
        **(env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "annlab.run.repro", *args],
        cwd=repo,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(predicate: object, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.1)


def _workers(driver: int) -> list[int]:
    """The local executor's worker processes: the driver's spawned children (not its resource tracker)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = int(re.search(r"^PPid:\s+(\d+)", status.read_text(), re.MULTILINE)[1])
            cmdline = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, TypeError):
            continue
        if ppid == driver and "spawn_main" in cmdline and "resource_tracker" not in cmdline:
            found.append(int(status.parent.name))
    return found


@pytest.fixture(scope="module")
def grids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same small grid trained by the executor (two warm workers, two cells each) and by a
    cold, bare `dvc repro`."""
    warm = tmp_path_factory.mktemp("warm")
    small_repo(warm, _small())
    cold = tmp_path_factory.mktemp("cold")
    shutil.copytree(warm, cold, dirs_exist_ok=True)
    first = repro(warm, 2, _store(warm))
    dvc(cold, "repro", store=_store(cold))
    return {"warm": warm, "cold": cold, "first": first}  # type: ignore[dict-item]


# ---------------------------------------------------------------------------------------------
# Pure helpers


def test_a_cell_is_read_from_its_stage_command() -> None:
    cmd = (
        "PYTHONPATH=src python -m annlab.stages.train --model ann --optimizer adam --activation relu"
        " --data data/processed --model-dir models/ann-adam-relu --history reports/history/ann-adam-relu"
    )
    cell = cell_from_command("train@ann-adam-relu", cmd)
    assert cell.name == "ann-adam-relu"
    assert cell.argv[:2] == ("--model", "ann")
    assert cell.outputs == ("models/ann-adam-relu", "reports/history/ann-adam-relu")
    with pytest.raises(UserError, match="does not run"):
        cell_from_command("train@x", "python other.py")


def test_ray_resources_come_from_the_environment() -> None:
    assert ray_resources({}) == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert ray_resources({"ANNLAB_CPUS_PER_CELL": "2", "ANNLAB_GPUS_PER_CELL": "0.25"}) == {
        "num_cpus": 2.0,
        "num_gpus": 0.25,
    }
    for env in ({"ANNLAB_CPUS_PER_CELL": "0"}, {"ANNLAB_GPUS_PER_CELL": "-1"}, {"ANNLAB_CPUS_PER_CELL": "x"}):
        with pytest.raises(UserError, match=next(iter(env))):
            ray_resources(env)


def test_a_version_mismatch_names_both_versions() -> None:
    here = {"python": "3.11.7", "ray": "2.60.0", "tensorflow": "2.21.0"}
    assert version_mismatch(here, dict(here)) is None
    message = version_mismatch(here, {**here, "tensorflow": "2.20.0"})
    assert message and "tensorflow 2.21.0 here, 2.20.0 on the cluster" in message
    assert "ray" not in message.split(":", 1)[1].replace("Ray cluster", "")


def test_only_a_missing_dependency_stops_the_stages_after_the_grid_on_a_worker() -> None:
    from annlab.run.repro import missing_deps

    # As `dvc status` words it: an output gone (a fresh clone) is rewritten by the stage itself.
    assert missing_deps({"evaluate": [{"changed outs": {"reports/predictions": "deleted"}}]}) == []
    assert missing_deps({"evaluate": [{"changed deps": {"models": "modified"}}, "changed command"]}) == []
    gone = {"report": [{"changed deps": {"reports/figures/cells": "deleted", "models": "modified"}}]}
    assert missing_deps(gone) == ["reports/figures/cells"]


def test_workers_start_early_only_when_a_cell_may_train(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make repro` starts its local workers before the stages upstream of the grid (their imports
    overlap that work) when a cell or an upstream stage is stale: JOBS of them, or one with Ray
    (for the stages after the grid); none for the cold `dvc` executor, or when only stages after
    the grid are; unused, they are stopped at once."""
    from annlab.run import repro as rp

    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # annlab's dvc.yaml
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert rp.around_grid() == (["validate", "fetch", "preprocess"], ["evaluate", "plot", "report"])
    assert rp.early_workers("auto", 2, {"report": [], "plot": []}) is None
    assert rp.early_workers("dvc", 2, {"train@ann-adam-relu": []}) is None
    assert rp.early_workers("ray", 2, {"report": []}) is None
    cases = [  # RAY_ADDRESS, executor, stale stages, workers started
        ("", "auto", {"preprocess": []}, 2),
        ("", "auto", {"train@ann-adam-relu": [], "report": []}, 2),
        ("", "ray", {"train@ann-adam-relu": []}, 1),
        ("127.0.0.1:1", "auto", {"preprocess": []}, 1),
    ]
    for address, kind, stale, expected in cases:
        monkeypatch.setenv("RAY_ADDRESS", address)
        workers = rp.early_workers(kind, 2, stale)
        try:
            assert workers is not None and len(workers.workers) == expected
            processes = [w.process for w in workers.workers]
            assert all(p.is_alive() for p in processes)
        finally:
            started = time.monotonic()
            workers.close()  # still importing TensorFlow: killed, not waited for
        assert time.monotonic() - started < 5 and not any(p.is_alive() for p in processes)


# ---------------------------------------------------------------------------------------------
# Local workers


@pytest.mark.slow
def test_the_executor_reports_where_cells_run_and_each_cell(grids: dict) -> None:
    out = grids["first"].stdout
    assert "executor: local, 2 workers" in out
    for cell in CELLS:
        assert re.search(rf"^\[\d/4\] {cell}\s+val 0\.\d{{4}}\s+\d+\.\d s$", out, re.MULTILINE), out
    assert _summary(grids["first"]) == (4, 0, 0)
    assert "Running stage 'train@" not in out  # no cold stage command ran a cell
    # The stages after the grid ran in turn on a warm worker, not as cold stage commands.
    ran = re.findall(r"^Running stage '(\w+)'( on a warm worker)?:$", out, re.MULTILINE)
    assert ran[-3:] == [(s, " on a warm worker") for s in ("evaluate", "plot", "report")], out
    assert "report: registry: registered annlab-digits version 1" in out


@pytest.mark.slow
def test_stages_after_the_grid_run_in_turn_on_a_warm_worker(tmp_path: Path) -> None:
    """The executor asks for what comes after the cells only once every cell is done, runs each
    stage on a warm worker with what it printed, and names a stage that fails."""
    from annlab.run.cell import Job
    from annlab.run.local import LocalExecutor

    shutil.copy(Path(__file__).resolve().parents[2] / "params.yaml", tmp_path / "params.yaml")
    jobs = [
        Job("ok", ("--params", str(tmp_path / "params.yaml"), "--params-only"), "annlab.stages.validate"),
        Job("broken", ("--params", str(tmp_path / "missing.yaml")), "annlab.stages.validate"),
    ]
    asked = []

    def after() -> Job | None:
        asked.append(len(outcomes))
        return jobs.pop(0) if jobs else None

    outcomes: list = []
    for outcome in LocalExecutor(2).run([], lambda: 0, after):
        outcomes.append(outcome)
    assert asked == [0, 1, 2]  # one stage at a time, each once the last was handled
    done, failed = outcomes
    assert (done.job.stage, done.status, failed.job.stage, failed.status) == (
        "ok",
        "done",
        "broken",
        "failed",
    )
    assert "missing.yaml" in failed.error


@pytest.mark.slow
def test_warm_workers_give_the_bits_of_a_cold_dvc_repro(grids: dict) -> None:
    warm, cold = grids["warm"], grids["cold"]
    assert _results(warm) == _results(cold)
    assert _weights(warm) == _weights(cold)


@pytest.mark.slow
def test_cells_are_recorded_as_dvc_repro_records_them(grids: dict) -> None:
    warm, cold = grids["warm"], grids["cold"]
    assert _lock_entries(warm) == _lock_entries(cold)
    assert sorted(_lock_entries(warm)) == sorted(f"train@{c}" for c in CELLS)
    assert _status(warm) == {}
    again = repro(warm, 2, _store(warm))
    assert "Running stage" not in again.stdout and _summary(again) == (0, 0, 0)
    # The run cache holds every cell: cleared from the workspace and dvc.lock, each comes back
    # without training.
    lock = yaml.safe_load((warm / "dvc.lock").read_text())
    for cell in CELLS:
        del lock["stages"][f"train@{cell}"]
        shutil.rmtree(warm / "models" / cell)
    (warm / "dvc.lock").write_text(yaml.safe_dump(lock))
    before = _results(cold)
    restored = repro(warm, 2, _store(warm))
    assert _summary(restored) == (0, 4, 0)
    assert _results(warm) == before and _status(warm) == {}


@pytest.mark.slow
def test_a_changed_param_retrains_its_cells_and_changing_it_back_restores_them(grids: dict) -> None:
    warm = grids["warm"]
    path = warm / "params.yaml"
    good = path.read_text()
    before = _results(warm)
    params = yaml.safe_load(good)
    params["optimizers"]["adam"]["learning_rate"] = 0.01
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        changed = repro(warm, 2, _store(warm))
        # The adam cells train anew: their outputs in dvc.lock are stale, not a cached result.
        assert _summary(changed) == (2, 0, 0), changed.stdout
        after = _results(warm)
        for cell in CELLS:
            history = f"reports/history/{cell}/seed-42.csv"
            assert (after[history] == before[history]) == ("-sgd-" in cell), cell
        assert (
            json.loads((warm / "models/ann-adam-relu/seed-42/meta.json").read_text())["cell_key"]
            != (json.loads(before["models/ann-adam-relu/seed-42/meta.json"])["cell_key"])
        )
    finally:
        path.write_text(good)
    # Back to the old rate: those cells come from the run cache, bit for bit.
    back = repro(warm, 2, _store(warm))
    assert _summary(back) == (0, 2, 0), back.stdout
    assert _results(warm) == before and _status(warm) == {}


@pytest.mark.slow
def test_a_failing_cell_is_named_and_the_others_complete(tmp_path: Path) -> None:
    small_repo(tmp_path, _small())
    # A bug only one cell hits, in the copy's own code (the code its workers run).
    train = tmp_path / "src/annlab/stages/train.py"
    hook = "    args = p.parse_args(argv)\n"
    assert hook in train.read_text()
    bug = "    if (args.optimizer, args.activation) == ('sgd', 'tanh'):\n"
    bug += "        raise RuntimeError('a bug')\n"
    train.write_text(train.read_text().replace(hook, hook + bug))
    proc = repro(tmp_path, 2, _store(tmp_path), check=False)
    assert proc.returncode == 1
    failed = r"^\[\d/4\] ann-sgd-tanh\s+FAILED: RuntimeError\('a bug'\)$"
    assert re.search(failed, proc.stderr, re.MULTILINE), proc.stderr
    assert _summary(proc) == (3, 0, 1)
    stale = _status(tmp_path)
    assert "train@ann-sgd-tanh" in stale
    assert not any(f"train@{cell}" in stale for cell in CELLS if cell != "ann-sgd-tanh")
    assert not (tmp_path / "reports/comparison.md").exists()  # the report waits for every cell


@pytest.mark.slow
def test_a_killed_worker_has_its_cell_retried_on_a_fresh_one(tmp_path: Path) -> None:
    small_repo(tmp_path, _small(epochs=150))
    driver = _popen(tmp_path, "--jobs", "2")
    try:
        # both workers are logging their cells (the grid's run is RUNNING too)
        _wait_for(lambda: _workers(driver.pid) and _running_runs(tmp_path) > 2, "training")
        os.kill(_workers(driver.pid)[0], signal.SIGKILL)
        out, _ = driver.communicate(timeout=600)
    finally:
        driver.kill()
    assert driver.returncode == 0, out
    assert "its worker died (killed by SIGKILL); retrying it on a fresh worker" in out
    assert _summary(out) == (4, 0, 0)
    assert _status(tmp_path) == {}
    assert not list((tmp_path / "models").glob(".ann-*")), "a killed worker's partial outputs were left"
    _killed_run_is_superseded(tmp_path)


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_keeps_finished_cells_and_the_next_run_trains_the_rest(
    tmp_path: Path,
) -> None:
    small_repo(tmp_path, _small(epochs=150))
    driver = _popen(tmp_path, "--jobs", "2")
    lines = []
    try:
        for line in driver.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if re.match(r"^\[1/4\] ", line):
                driver.send_signal(signal.SIGINT)
                break
        out = "".join(lines) + driver.communicate(timeout=300)[0]
    finally:
        driver.kill()
    assert driver.returncode == 130, out
    trained, _, failed = _summary(out)
    assert 1 <= trained < 4 and failed == 0
    assert f"interrupted {4 - trained}" in out
    assert not list((tmp_path / "models").glob(".ann-*"))
    stale = {name for name in _status(tmp_path) if name.startswith("train@")}
    assert len(stale) == 4 - trained
    rest = repro(tmp_path, 2, _store(tmp_path))
    assert _summary(rest) == (4 - trained, 0, 0)
    assert _status(tmp_path) == {}


def test_a_ray_workers_data_copy_replaces_its_last_one_and_those_of_ended_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the node's temporary directory
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    old = "0123456789abcdef"
    left = {
        "mine": f"annlab-data-{os.getpid()}-{old}",  # this worker's copy of an earlier grid
        "ended": f"annlab-data-{ended.pid}-{old}",
        "half-written": f".annlab-data-{ended.pid}-{old}.x1y2",
        "running": f"annlab-data-{os.getppid()}-{old}",  # another worker's, still in use
        "not ours": "annlab-data-notes",
    }
    for name in left.values():
        (tmp_path / name).mkdir()
    digest = "f" * 64
    root = ray_executor._grid_data({"x.npy": b"12", "seed-1/y.npy": b"3"}, digest)
    assert root == tmp_path / f"annlab-data-{os.getpid()}-{digest[:16]}"
    assert (root / "x.npy").read_bytes() == b"12" and (root / "seed-1/y.npy").read_bytes() == b"3"
    kept = [root.name, left["running"], left["not ours"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    # the worker's next cell of the grid reads the same copy, without writing it again
    assert ray_executor._grid_data({}, digest) == root and (root / "x.npy").exists()


def _settings() -> dict[str, str]:
    """The environment's MLflow and annlab settings (TensorFlow's import adds its own)."""
    return {k: v for k, v in os.environ.items() if k.startswith(("MLFLOW_", "ANNLAB_"))}


def _folder_place(folder: Path, **changes: object) -> store.Place:
    folder.mkdir(exist_ok=True)
    found = folder.stat()
    place = store.Place(
        f"sqlite:///{folder / 'mlflow.db'}", store.machine(), "feedc0de", (found.st_dev, found.st_ino)
    )
    return dataclasses.replace(place, **changes)


def test_a_ray_task_logs_only_where_it_can_write_and_leaves_its_worker_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(store.OFFLINE_ENV, raising=False)
    monkeypatch.delenv(store.SOURCE_COMMIT_ENV, raising=False)
    before = dict(os.environ)

    here = _folder_place(tmp_path / "store", env=(("MLFLOW_HTTP_REQUEST_TIMEOUT", "7"),))
    with ray_executor._mlflow_for(here, "annlab") as why_not:
        assert why_not == ""
        assert os.environ["MLFLOW_TRACKING_URI"] == here.uri and not store.offline()
        assert os.environ[store.SOURCE_COMMIT_ENV] == "feedc0de"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    assert dict(os.environ) == before  # the worker's next task starts from its own environment

    elsewhere = _folder_place(tmp_path / "store", machine="elsewhere/0000")
    with ray_executor._mlflow_for(elsewhere, "annlab") as why_not:
        assert "cannot reach it" in why_not and store.offline()
    assert dict(os.environ) == before

    # It reaches the file but cannot log there: trained offline, not failed.
    broken = _folder_place(tmp_path / "broken")
    (tmp_path / "broken" / "mlflow.db").write_bytes(b"not a database, whatever its name says" * 100)
    with ray_executor._mlflow_for(broken, "annlab") as why_not:
        assert "cannot log there" in why_not and store.offline()
    assert dict(os.environ) == before

    with ray_executor._mlflow_for(None, "annlab") as why_not:  # the driver is offline
        assert why_not == "" and store.offline()
    assert dict(os.environ) == before


# ---------------------------------------------------------------------------------------------
# A real Ray cluster


@pytest.fixture(scope="module")
def ray_alone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The machine's only Ray cluster while this module's runs (`one_ray_cluster`)."""
    with one_ray_cluster(tmp_path_factory):
        yield


@pytest.fixture(scope="module")
def ray_head(ray_alone: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray head on 127.0.0.1 with 2 CPUs and no dashboard; its address."""
    port = free_port()
    log = tmp_path_factory.mktemp("ray") / "head.log"
    env = {**os.environ, **RAY_LOOPBACK}
    ray = str(Path(sys.executable).parent / "ray")
    with log.open("w") as out:
        head = subprocess.Popen(
            [
                ray,
                "start",
                "--ray-client-server-port",
                str(free_port()),
                "--head",
                "--node-ip-address",
                "127.0.0.1",
                "--port",
                str(port),
                "--num-cpus",
                "2",
                "--include-dashboard",
                "false",
                "--disable-usage-stats",
                "--block",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    address = f"127.0.0.1:{port}"
    try:
        _wait_for(
            lambda: "Ray runtime started" in log.read_text() or head.poll() is not None, "ray start", 120
        )
        assert head.poll() is None, log.read_text()
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=10)  # Ray drains for up to 30 s; nothing of this test's is left to drain
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)


def _ray_env(address: str) -> dict[str, str]:
    return {"RAY_ADDRESS": address, **RAY_LOOPBACK}


@pytest.mark.slow
def test_a_ray_cluster_gives_the_local_bits_and_one_mlflow_run_per_cell(
    ray_head: str, grids: dict, tmp_path: Path
) -> None:
    commit = small_repo(tmp_path, _small())
    driver = _popen(tmp_path, env=_ray_env(ray_head))
    out, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, out
    assert f"executor: ray at {ray_head}, 2 CPUs" in out
    assert "cannot reach MLflow's store" not in out
    # the stages after the grid write this workspace: a local worker, warm by then, runs them
    for stage in ("evaluate", "plot", "report"):
        assert f"Running stage '{stage}' on a warm worker" in out
    assert _summary(out) == (4, 0, 0)
    assert _results(tmp_path) == _results(grids["cold"])
    assert _lock_entries(tmp_path) == _lock_entries(grids["cold"])
    assert _status(tmp_path) == {}
    assert _cell_runs(tmp_path) == sorted(CELLS)
    # The Ray workers reach the store (a file on this machine): each logged its cell while it
    # trained, as a local worker does, rather than the report rebuilding the run afterwards.
    for run in _runs(tmp_path):
        tags = run.data.tags
        assert tags["annlab.stage"] == f"train@{run.info.run_name}", tags
        assert tags["mlflow.source.git.commit"] == commit
        assert "annlab.reused_from" not in tags and run.info.status == "FINISHED"


@pytest.mark.slow
def test_a_killed_ray_worker_is_retried_and_nothing_is_duplicated(ray_head: str, tmp_path: Path) -> None:
    small_repo(tmp_path, _small(epochs=300))
    driver = _popen(tmp_path, env=_ray_env(ray_head))

    def ray_workers() -> list[int]:
        found = subprocess.run(["pgrep", "-f", "ray::_ray_train"], capture_output=True, text=True).stdout
        return [int(pid) for pid in found.split()]

    try:
        # both workers are logging their cells (the grid's run is RUNNING too)
        _wait_for(lambda: ray_workers() and _running_runs(tmp_path) > 2, "Ray tasks logging their cells")
        time.sleep(1)  # into its training
        os.kill(ray_workers()[0], signal.SIGKILL)
        out, _ = driver.communicate(timeout=600)
    finally:
        driver.kill()
    assert driver.returncode == 0, out
    assert _summary(out) == (4, 0, 0)
    assert _status(tmp_path) == {}
    _killed_run_is_superseded(tmp_path)


@pytest.mark.slow
def test_a_ray_task_logs_to_the_drivers_store_only_when_it_reaches_it(
    grids: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task in-process, without Ray: offline where it cannot reach the store (the report
    files the run then), logging as a local worker where it can."""
    cold = grids["cold"]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the node's temporary directory
    stage = "train@ann-sgd-relu"
    cell = cell_from_command(stage, yaml.safe_load((cold / "dvc.lock").read_text())["stages"][stage]["cmd"])
    data_dir = cold / "data/processed"
    data = {str(p.relative_to(data_dir)): p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file()}
    args = (cell, (cold / "params.yaml").read_text(), data, io.data_digest(data_dir))
    here = _folder_place(tmp_path / "store")
    before = _settings()

    away = ray_executor._ray_train(*args, dataclasses.replace(here, machine="elsewhere/0000"))
    assert away.status == "trained" and away.unlogged
    assert not (tmp_path / "store" / "mlflow.db").exists()

    near = ray_executor._ray_train(*args, here)
    assert near.status == "trained" and near.unlogged == ""
    assert _settings() == before  # the task's MLflow settings are gone with it
    assert near.files.keys() == away.files.keys()
    client = MlflowClient(here.uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("annlab").experiment_id], "tags.`annlab.role` = 'final'"
    )
    assert run.info.status == "FINISHED" and run.info.run_name == "ann-sgd-relu"
    assert run.data.tags["mlflow.source.git.commit"] == "feedc0de"
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 2  # each epoch, as it trained


# ---------------------------------------------------------------------------------------------
# A DVC remote shared by a team


@pytest.mark.slow
def test_a_teammate_who_pulls_from_the_remote_trains_nothing(tmp_path: Path) -> None:
    a, b, remote = tmp_path / "a", tmp_path / "b", tmp_path / "remote"
    a.mkdir()
    small_repo(a, _small())
    git = ["git", "-c", "user.name=annlab-test", "-c", "user.email=test@annlab.invalid"]
    dvc(a, "remote", "add", "-d", "team", str(remote), store=None)
    subprocess.run([*git, "commit", "-qam", "a DVC remote for the team"], cwd=a, check=True)
    assert _summary(repro(a, 2, _store(a))) == (4, 0, 0)
    dvc(a, "push", "--run-cache", store=None)
    subprocess.run([*git, "add", "-A"], cwd=a, check=True)
    subprocess.run([*git, "commit", "-qm", "grid results"], cwd=a, check=True)
    # A fresh clone: git brings dvc.lock and the small reports, the remote the data and models.
    subprocess.run(["git", "clone", "-q", str(a), str(b)], check=True)
    assert not list((b / "models").glob("*/seed-*")) and not (b / "data/processed").exists()
    dvc(b, "pull", store=None)
    proc = repro(b, 2, _store(b))
    assert _summary(proc) == (0, 0, 0)
    assert "Running stage" not in proc.stdout and "executor:" not in proc.stdout
    assert _status(b) == {}
    assert _results(b) == _results(a)
    assert _weights(b) == _weights(a)
    for path in ("reports/comparison.csv", "reports/summary.json"):
        assert (b / path).read_bytes() == (a / path).read_bytes(), path
