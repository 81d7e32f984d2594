"""Faults and the shared tracking server: an interrupted training stage writes no output and
its MLflow run ends KILLED; an unreachable server stops a stage within seconds, naming it; the
pipeline logs to a real `mlflow server` over HTTP."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from annlab.errors import Interrupted
from conftest import default_sigint, dvc, free_port, processed_blobs, repro, small_repo


def _train_argv(cell_dir: str) -> list[str]:
    """The train stage of cell ann-adam-relu, writing models/<cell_dir> and history/<cell_dir>."""
    argv = [sys.executable, "-m", "annlab.stages.train", "--model", "ann", "--optimizer", "adam"]
    argv += ["--activation", "relu", "--data", "data"]
    return [*argv, "--model-dir", f"models/{cell_dir}", "--history", f"history/{cell_dir}"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_cell_writes_nothing_and_its_run_is_killed(
    tmp_path: Path, mlflow_store: str, signum: signal.Signals
) -> None:
    processed_blobs(tmp_path / "data", n_train=60)
    # Epochs enough to still be training when the signal comes (a few ms each).
    params = {
        "train": {"epochs": 10000, "batch_size": 16},
        "grid": {"optimizer": ["adam"], "activation": ["relu"]},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "models").mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        _train_argv("ann-adam-relu"),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    assert proc.stdout is not None
    started = time.monotonic()
    for line in proc.stdout:  # Keras prints a line per epoch when not on a terminal
        if line.startswith("Epoch 3/"):
            break
        assert time.monotonic() - started < 300, "training never started"  # hang guard
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 128 + signum
    assert f"interrupted ({signum.name})" in stderr and "dvc repro" in stderr
    assert "Traceback" not in stderr
    # No output, not even a temporary one, that DVC or a person could take as finished.
    assert list((tmp_path / "models").iterdir()) == []
    assert not (tmp_path / "history").exists() or list((tmp_path / "history").iterdir()) == []
    client = MlflowClient(mlflow_store)
    (exp,) = [e for e in client.search_experiments() if e.name == "annlab"]
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`annlab.role` = 'final'")
    assert [r.info.status for r in runs] == ["KILLED"]
    # Its curves up to the interruption: epochs 1 and 2 at least had ended.
    assert len(client.get_metric_history(runs[0].info.run_id, "loss")) >= 2


@pytest.mark.slow
def test_an_unreachable_tracking_server_stops_the_stage_within_seconds(tmp_path: Path) -> None:
    processed_blobs(tmp_path / "data", n_train=60)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"epochs": 2}}))
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    proc = subprocess.run(
        _train_argv("m"),
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
    )
    seconds = time.monotonic() - started
    assert proc.returncode == 2
    assert f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) cannot be reached" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert seconds < 60  # MLflow's own retries would take minutes; 7 s alone, more beside the suite
    assert not (tmp_path / "models").exists()


class Server:
    """A real `mlflow server` on a free loopback port, as `make server` starts it (SQLite
    backend, artifacts proxied by the server, no GenAI job runner); it can be stopped and started
    again. One web worker, not MLflow's four: beside the rest of the suite on two cores, four
    workers and the job runner's eight processes, each importing MLflow, once took over 90 s to
    answer."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.store.mkdir()
        self.uri = f"http://127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import requests

        argv = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1"]
        argv += ["--port", self.uri.rsplit(":", 1)[1], "--serve-artifacts"]
        argv += ["--backend-store-uri", f"sqlite:///{self.store / 'mlflow.db'}"]
        argv += ["--artifacts-destination", str(self.store / "artifacts"), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        log = self.store / "server.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, cwd=self.store, env=env, stdout=out, stderr=out, start_new_session=True
            )
        started = time.monotonic()
        while True:
            try:
                if requests.get(f"{self.uri}/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            waited = time.monotonic() - started
            assert self.proc.poll() is None and waited < 300, (
                f"mlflow server did not answer in {waited:.0f} s (exit {self.proc.poll()}):\n"
                + log.read_text(errors="replace")[-3000:]
            )
            time.sleep(0.5)

    def stop(self) -> None:
        """Kill it, as a crash or a lost network would: no chance to answer another request."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its workers
            self.proc.wait(timeout=30)


@pytest.fixture
def idle_server(tmp_path: Path) -> Iterator[Server]:
    """A tracking server not yet started; whatever the test does, it is stopped at the end."""
    srv = Server(tmp_path / "server")
    yield srv
    srv.stop()


@pytest.fixture
def server(idle_server: Server) -> str:
    """A running tracking server's URI."""
    idle_server.start()
    return idle_server.uri


@pytest.mark.slow
def test_the_pipeline_logs_to_a_real_tracking_server(
    tmp_path: Path, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def tiny(params: dict) -> None:
        params["data"]["subset"] = 200
        params["train"]["epochs"] = 2
        params["grid"] = {
            "model": ["ann"],
            "optimizer": ["adam"],
            "activation": ["relu", "tanh"],
            "seeds": None,
        }

    repo = tmp_path / "repo"
    repo.mkdir()
    small_repo(repo, tiny)
    # Credentials come from the environment (this server does not check them): none may end up
    # in a run, an output or the log.
    secret = "s3cret-Token-42"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "annlab")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    done = repro(repo, 2, server)
    assert secret not in done.stdout + done.stderr
    written = [p for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts and p.suffix != ".keras"]
    assert not [p for p in written if secret.encode() in p.read_bytes()]
    client = MlflowClient(server)
    (exp,) = [e for e in client.search_experiments() if e.name == "annlab"]
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("annlab.role") == "grid"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["ann-adam-relu", "ann-adam-tanh"]
    assert all(r.info.status == "FINISHED" for r in [parent, *children])
    for run in children:
        assert run.data.metrics["test_accuracy"] > 0
        # Artifacts go through the server (mlflow-artifacts:), into its artifact store.
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        assert {"history", "model_summary.txt", "plots"} <= {
            a.path for a in client.list_artifacts(run.info.run_id)
        }
        models = client.search_logged_models(
            [exp.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
        assert len(models) == 1
    for run in runs:
        assert secret not in json.dumps([run.data.params, run.data.tags])
    stored = list((tmp_path / "server" / "artifacts").rglob("MLmodel"))
    assert len(stored) == 2
    assert not (repo / "mlflow.db").exists()  # nothing went to the local store


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_eight_queued_experiments_two_at_a_time_all_land_once(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    """`dvc queue start -j 2` over 8 experiments, the grid's stages writing to one store at
    once: the SQLite file at the repo root, or a tracking server."""
    uri = request.getfixturevalue("server") if store == "server" else None

    def tiny(params: dict) -> None:
        params["data"]["subset"] = 200
        params["train"]["epochs"] = 1
        params["grid"] = {"model": ["ann"], "optimizer": ["adam"], "activation": ["relu"], "seeds": None}

    repo = tmp_path / "repo"
    repo.mkdir()
    small_repo(repo, tiny)
    rates = [f"0.00{i}" for i in range(1, 9)]
    dvc(repo, "exp", "run", "--queue", "-S", f"optimizers.adam.learning_rate={','.join(rates)}", store=uri)
    dvc(repo, "queue", "start", "-j", "2", store=uri)
    deadline = time.monotonic() + 1200  # a hang's limit: 449 s once beside the rest of the suite
    while True:
        status = dvc(repo, "queue", "status", store=uri).stdout
        if "Queued" not in status and "Running" not in status:
            break
        assert time.monotonic() < deadline, status
        time.sleep(5)
    assert status.count("Success") == 8, status
    assert "Failed" not in status

    client = MlflowClient(uri or f"sqlite:///{repo / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "annlab"]
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    cells = [r for r in runs if r.data.tags.get("annlab.role") == "final"]
    grids = [r for r in runs if r.data.tags.get("annlab.role") == "grid"]
    # One grid and one cell run per experiment: none lost, none twice, none failed.
    assert (len(cells), len(grids)) == (8, 8)
    assert sorted(r.data.params["optimizers.adam.learning_rate"] for r in cells) == rates
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["annlab.dvc_exp"] for r in grids}) == 8


def _annlab(repo: Path, *args: str, uri: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": "src"}
    argv = [str(Path(sys.executable).parent / "annlab"), *args]
    return subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_no_run_is_lost_to_a_server_that_is_down_and_sync_uploads_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, idle_server: Server
) -> None:
    """Server down: the grid's first cell fails fast, naming it. Offline: a cell trains with no
    MLflow at all. Server lost mid-training: the cell still writes its outputs. Then `annlab
    sync` uploads every run once, and a second sync or a repro uploads nothing more."""
    import threading

    def tiny(params: dict) -> None:
        params["data"]["subset"] = 200
        params["train"]["epochs"] = 600  # several seconds of training, to lose the server in
        params["grid"] = {
            "model": ["ann"],
            "optimizer": ["adam"],
            "activation": ["relu", "tanh"],
            "seeds": None,
        }

    repo = tmp_path / "repo"
    repo.mkdir()
    small_repo(repo, tiny)
    server = idle_server

    # 1. Down: the first cell stops at once with the server's URI; nothing trained.
    down = repro(repo, 1, server.uri, check=False)
    assert down.returncode != 0
    assert f"MLflow tracking server {server.uri} (MLFLOW_TRACKING_URI) cannot be reached" in down.stderr
    assert not list((repo / "models").glob("*/seed-*"))

    # 2. Offline: one cell trains and is done for DVC, with no store anywhere.
    monkeypatch.setenv("ANNLAB_OFFLINE", "1")
    dvc(repo, "repro", "train@ann-adam-relu", store=server.uri)
    monkeypatch.delenv("ANNLAB_OFFLINE")
    assert (repo / "models/ann-adam-relu/seed-42/model.keras").is_file()
    assert not (repo / "mlflow.db").exists()

    # 3. Lost mid-training: the other cell keeps training and writes its outputs; the report,
    # which starts after the loss, fails fast.
    server.start()
    result: list[subprocess.CompletedProcess[str]] = []
    thread = threading.Thread(target=lambda: result.append(repro(repo, 1, server.uri, check=False)))
    thread.start()
    client = MlflowClient(server.uri)
    deadline = time.monotonic() + 300  # a hang guard: a cold stage beside the rest of the suite
    while not _running_with_curves(client):
        assert thread.is_alive() and time.monotonic() < deadline, "the cell never started logging"
        time.sleep(0.3)
    server.stop()
    thread.join(timeout=300)
    assert result, "the pipeline did not end within 5 minutes of the loss"
    (lost,) = result
    assert lost.returncode != 0, "the report cannot have filed the grid"
    assert f"MLflow tracking server {server.uri} was lost" in lost.stderr
    assert "train@ann-adam-tanh" in (repo / "dvc.lock").read_text()  # done, as far as DVC goes
    assert (repo / "models/ann-adam-tanh/seed-42/model.keras").is_file()

    # 4. Back up: sync uploads what is missing, once.
    server.start()
    synced = _annlab(repo, "sync", uri=server.uri)
    assert synced.returncode == 0, synced.stderr
    exp_id = client.get_experiment_by_name("annlab").experiment_id
    runs = client.search_runs([exp_id], max_results=1000)
    cells = [r for r in runs if r.data.tags.get("annlab.role") == "final" and r.info.status == "FINISHED"]
    assert sorted(r.info.run_name for r in cells) == ["ann-adam-relu", "ann-adam-tanh"]  # each once
    (parent,) = [r for r in runs if r.data.tags.get("annlab.role") == "grid"]
    assert parent.info.status == "FINISHED" and parent.data.metrics["best_test_accuracy"] > 0
    (partial,) = [r for r in runs if r.info.status != "FINISHED"]  # the run the loss cut short
    assert (partial.info.run_name, partial.info.status) == ("ann-adam-tanh", "FAILED")
    (tanh,) = [r for r in cells if r.info.run_name == "ann-adam-tanh"]
    assert partial.data.tags["annlab.superseded_by"] == tanh.info.run_id
    for run in cells:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert "annlab.reused_from" not in run.data.tags  # uploaded whole: it holds the model
        assert run.data.metrics["test_accuracy"] > 0 and run.data.metrics["n_params"] > 0
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 600
        assert {"history", "model_summary.txt", "plots", "evaluation"} <= {
            a.path for a in client.list_artifacts(run.info.run_id)
        }
        models = client.search_logged_models([exp_id], filter_string=f"source_run_id = '{run.info.run_id}'")
        assert len(models) == 1
    # The grid's best model, trained while MLflow was away, is registered by the sync.
    (version,) = client.search_model_versions("name='annlab-digits'")
    assert version.tags["annlab.cell"] == parent.data.tags["annlab.best_cell"]
    assert client.get_model_version_by_alias("annlab-digits", "champion").version == version.version

    # 5. Nothing twice: neither a second sync nor the repro that finishes the pipeline adds a run
    # or a model version.
    assert _annlab(repo, "sync", uri=server.uri).returncode == 0
    repro(repo, 1, server.uri)
    again = client.search_runs([exp_id], max_results=1000)
    assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in runs)
    assert {r.info.run_id: r.info.status for r in again} == {r.info.run_id: r.info.status for r in runs}
    assert len(client.search_model_versions("name='annlab-digits'")) == 1


def _running_with_curves(client: MlflowClient) -> bool:
    """Whether a cell's run is training and has logged an epoch."""
    exp = client.get_experiment_by_name("annlab")
    if exp is None:
        return False
    running = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'")
    return any(r.data.tags.get("annlab.role") == "final" and "loss" in r.data.metrics for r in running)


def _dvc_run_cache_race(output: str) -> bool:
    """Whether DVC failed a stage in its own run-cache race. DVC 3.67 saves a run-cache entry
    as a `.tmp` file in the stage's folder of `.dvc/cache/runs`, then renames it, while a
    process restoring the same stage lists that folder: the reader may find the file
    half-written, call it corrupted and fail deleting it once renamed, or delete it first so
    that the writer's rename fails, or fail reading its time. Each ends in "No such file or
    directory" on the `.tmp` file. Concurrent experiments share the cache and their first
    stages, so they can meet there; annlab's code is not involved."""
    return bool(re.search(r"No such file or directory: '[^']*cache/runs/[^']*\.tmp'", output))


def test_the_run_cache_race_is_told_from_other_failures() -> None:
    tmp = "/r/.dvc/cache/runs/78/78f4/.h_o6NNXHsZityg84Eb1U2A.tmp"
    reader = (
        f"WARNING: corrupted cache file '{tmp}'.\n"
        f"ERROR: failed to reproduce 'fetch': [Errno 2] No such file or directory: '{tmp}'"
    )
    writer = f"ERROR: failed to reproduce 'fetch': [Errno 2] No such file or directory: '{tmp}' -> '/r/x'"
    assert _dvc_run_cache_race(reader) and _dvc_run_cache_race(writer)
    # the warning alone, with another error, is not the race
    assert not _dvc_run_cache_race(f"WARNING: corrupted cache file '{tmp}'.\nERROR: database is locked")
    assert not _dvc_run_cache_race("ERROR: [Errno 2] No such file or directory: 'data/processed/seed-1'")


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_eight_dvc_exp_runs_at_once_all_land_once(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    """Eight `dvc --wait-for-lock exp run --temp` processes started together (no queue), each a
    whole pipeline writing to one store at once: the SQLite file at the repo root, or a server."""
    uri = request.getfixturevalue("server") if store == "server" else None

    def tiny(params: dict) -> None:
        params["data"]["subset"] = 200
        params["train"]["epochs"] = 1
        params["grid"] = {"model": ["ann"], "optimizer": ["adam"], "activation": ["relu"], "seeds": None}

    repo = tmp_path / "repo"
    repo.mkdir()
    small_repo(repo, tiny)
    rates = [f"0.00{i}" for i in range(1, 9)]
    # --wait-for-lock: DVC holds its repository lock while it sets each run up; without it, a
    # run that finds the lock taken stops at once ("Unable to acquire lock").
    argv = ["--wait-for-lock", "exp", "run", "--temp", "-S"]
    with concurrent.futures.ThreadPoolExecutor(len(rates)) as pool:
        jobs = [
            pool.submit(dvc, repo, *argv, f"optimizers.adam.learning_rate={rate}", store=uri, check=False)
            for rate in rates
        ]
        done = [job.result() for job in jobs]
    combined = "".join(p.stdout + p.stderr for p in done)
    # An experiment that DVC's own run-cache race failed (above) is run again once, alone; any
    # other failure, or that race twice, fails the test.
    for i, (rate, proc) in enumerate(zip(rates, done, strict=True)):
        if proc.returncode != 0 and _dvc_run_cache_race(proc.stdout + proc.stderr):
            done[i] = dvc(repo, *argv, f"optimizers.adam.learning_rate={rate}", store=uri, check=False)
            combined += done[i].stdout + done[i].stderr
    failed = [f"{p.stdout}\n{p.stderr}" for p in done if p.returncode != 0]
    assert not failed, failed[0]
    assert "database is locked" not in combined

    shown = json.loads(dvc(repo, "exp", "show", "--json", store=uri).stdout)
    exps = [e for rev in shown for e in (rev.get("experiments") or [])]
    assert len(exps) == 8  # DVC kept every experiment
    client = MlflowClient(uri or f"sqlite:///{repo / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "annlab"]
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    cells = [r for r in runs if r.data.tags.get("annlab.role") == "final"]
    grids = [r for r in runs if r.data.tags.get("annlab.role") == "grid"]
    assert (len(cells), len(grids)) == (8, 8)
    assert sorted(r.data.params["optimizers.adam.learning_rate"] for r in cells) == rates
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["annlab.dvc_exp"] for r in grids}) == 8


@pytest.fixture
def stop_signals() -> Iterator[None]:
    """annlab's SIGINT and SIGTERM handlers in this process, as a stage has them; restored after."""
    from annlab import runtime

    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when pytest runs in the background
    runtime.handle_stop_signals()
    yield
    signal.signal(signal.SIGINT, saved[0])
    signal.signal(signal.SIGTERM, saved[1])


def _fit_signalling_self(
    signals: dict[tuple[str, int], list[signal.Signals]], ended: list[int], own_loop: bool = True
) -> None:
    """Train a tiny network (100 epochs of 8 steps, one step per call) with annlab's fit (in
    its own loop, or in Keras' `fit`), sending this process the given signals after ("step", n)
    (counted from 0 over the whole training) or at the end of ("epoch", n) (from 0); `ended`
    gets the epochs (from 0) that ended."""
    import keras
    import numpy as np

    from annlab.train import loop
    from annlab.train import model as annmodel
    from annlab.train.speed import Speed

    class SignalSelf(keras.callbacks.Callback):
        step = 0

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            for sig in signals.get(("step", self.step), []):
                os.kill(os.getpid(), sig)
            self.step += 1

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            ended.append(epoch)
            for sig in signals.get(("epoch", epoch), []):
                os.kill(os.getpid(), sig)

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)).astype("float32"), np.eye(2)[rng.integers(0, 2, 64)]
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    net.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"], steps_per_execution=1)
    speed = Speed(steps_per_execution=1, own_loop=own_loop)
    assert loop.supported(net)  # so that own_loop picks the loop that trains
    annmodel.fit(
        net, (x, y), (x, y), epochs=100, batch_size=8, callbacks=[SignalSelf()], verbose=0, speed=speed
    )


@pytest.mark.parametrize("own_loop", [True, False], ids=["annlab-loop", "keras-fit"])
@pytest.mark.parametrize(
    ("signum", "raised"),
    [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Interrupted)],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_during_training_ends_it_after_the_step_then_raises(
    stop_signals: None, signum: signal.Signals, raised: type[BaseException], own_loop: bool
) -> None:
    """An exception thrown into TensorFlow mid-training can corrupt its heap (the process then
    aborts, its temporary outputs left behind): training stops between steps instead."""
    from annlab import runtime

    ended: list[int] = []
    with pytest.raises(raised):
        _fit_signalling_self({("step", 20): [signum]}, ended, own_loop)  # step 20: in the third epoch
    # Training ended with the third epoch, mid-way, not at the end of 100: the step after the
    # signal saw it, and fit returned before the signal was raised.
    assert ended == [0, 1, 2]
    assert not runtime.stop_requested()  # raised, so no longer pending

    # One that comes at an epoch's end (during validation or a callback's work) ends training there.
    ended.clear()
    with pytest.raises(raised):
        _fit_signalling_self({("epoch", 4): [signum]}, ended, own_loop)
    assert ended == [0, 1, 2, 3, 4]

    # Outside training a signal raises at once, as Python's own SIGINT handler does.
    with pytest.raises(raised):
        os.kill(os.getpid(), signum)
        time.sleep(5)


@pytest.mark.slow
def test_a_second_signal_stops_training_at_once() -> None:
    """Sent twice, a signal raises from within the step: in a process of its own, since that is
    the risky way out of TensorFlow that a single signal avoids."""
    code = (
        "import os, signal, sys\n"
        f"sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]\n"
        "from annlab import runtime\n"
        "from annlab.errors import Interrupted\n"
        "from test_faults import _fit_signalling_self\n"
        "runtime.handle_stop_signals()\n"
        "ended = []\n"
        "try:\n"
        "    _fit_signalling_self({('step', 20): [signal.SIGTERM, signal.SIGTERM]}, ended)\n"
        "except Interrupted:\n"
        "    print('ended', ended, 'pending', runtime.stop_requested(), flush=True)\n"
        "    os._exit(0)\n"
        "print('not interrupted', ended, flush=True)\n"
        "os._exit(1)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    # The first signal asked to stop after step 20; the second, at once: epoch 2 never ended.
    assert "ended [0, 1] pending False" in proc.stdout
