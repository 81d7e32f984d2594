"""Code tests: where runs are stored, how a cell's run is keyed and what it logs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from annlab.errors import Interrupted, UserError
from annlab.params import Params, cell_keys
from annlab.track import tracking
from conftest import free_port


def test_default_store_is_at_the_dvc_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_relative_sqlite_uri_is_taken_from_the_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///store/mlflow.db")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'store/mlflow.db'}"


def test_other_uris_pass_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


def test_experiment_artifacts_live_next_to_the_database(mlflow_store: str) -> None:
    from mlflow.tracking import MlflowClient

    exp_id = tracking.experiment_id("demo")
    assert tracking.experiment_id("demo") == exp_id
    location = MlflowClient().get_experiment(exp_id).artifact_location
    db = Path(mlflow_store.removeprefix("sqlite:///"))
    assert location == (db.parent / "mlartifacts").as_uri()
    assert MlflowClient().get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_keys_change_with_every_input() -> None:
    params = tracking.cell_params(Params(), "ann", "adam", "relu", 42)
    key = tracking.cell_key("ann-adam-relu", params, "digest")
    assert key == tracking.cell_key("ann-adam-relu", dict(params), "digest")
    assert key != tracking.cell_key("ann-adam-tanh", params, "digest")
    assert key != tracking.cell_key("ann-adam-relu", {**params, "train.epochs": 21}, "digest")
    other_seed = tracking.cell_params(Params(), "ann", "adam", "relu", 1)
    assert key != tracking.cell_key("ann-adam-relu", other_seed, "digest")
    assert key != tracking.cell_key("ann-adam-relu", params, "other data")
    # The same cell in another grid is another run.
    assert tracking.run_key(key, "grid-a") != tracking.run_key(key, "grid-b")


def test_cell_params_hold_the_cell_and_only_its_own_optimizer() -> None:
    logged = tracking.cell_params(Params(), "ann", "sgd", "tanh", 7)
    assert (logged["optimizer"], logged["activation"], logged["dataset"]) == ("sgd", "tanh", "digits")
    assert (logged["train.optimizer"], logged["model.activation"]) == ("sgd", "tanh")
    assert logged["seed"] == 7
    assert logged["optimizers.sgd.learning_rate"] == 0.01
    assert not any(k.startswith(("optimizers.adam", "optimizers.rmsprop", "grid.")) for k in logged)
    assert (logged["model_type"], logged["model.type"], logged["model.ann.dropout"]) == ("ann", "ann", 0.0)
    assert not any(k.startswith(("model.cnn.", "model.rnn.", "model.lstm.")) for k in logged)
    lstm = tracking.cell_params(Params(), "lstm", "sgd", "tanh", 7)
    assert (lstm["model_type"], lstm["model.lstm.units"]) == ("lstm", [128])
    assert not any(k.startswith(("model.ann.", "model.cnn.", "model.rnn.")) for k in lstm)


@pytest.mark.parametrize(("split_per_seed", "split_seed"), [(True, 7), (False, 42)])
def test_split_seed_is_the_seed_that_drew_the_runs_split(split_per_seed: bool, split_seed: int) -> None:
    params = Params.model_validate({"seed": 42, "data": {"split_per_seed": split_per_seed}})
    logged = tracking.cell_params(params, "ann", "sgd", "tanh", 7)
    assert (logged["seed"], logged["split_seed"], logged["data.split_per_seed"]) == (
        7,
        split_seed,
        split_per_seed,
    )


def test_cell_params_are_what_the_cell_depends_on_and_its_coordinates() -> None:
    params = Params.model_validate({"mlflow": {"experiment": "elsewhere"}})
    logged = tracking.cell_params(params, "cnn", "adam", "relu", 1)
    depends = {k for k in logged if "." in k}
    assert not any(k.startswith(("mlflow.", "grid.", "data.path")) for k in depends)
    assert {
        k.split(".")[0] + "." + k.split(".")[1] for k in depends if k.startswith(("model.cnn", "optimizers."))
    } == {
        "model.cnn",
        "optimizers.adam",
    }
    assert set(cell_keys("cnn", "adam")) - {"grid.seeds"} <= {".".join(k.split(".")[:2]) for k in logged} | {
        "seed"
    }


def test_cell_runs_are_children_of_one_grid_run_and_reruns_replace_them() -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    exp_id = tracking.experiment_id("demo")
    parent = tracking.grid_run(exp_id, "g1", "grid one", {})
    assert tracking.grid_run(exp_id, "g1", "grid one", {}) == parent
    assert tracking.grid_run(exp_id, "g2", "grid two", {}) != parent
    for _ in range(2):
        with tracking.start_cell_run(tracking.Link(), exp_id, "k1", "ann-adam-relu", parent, {}):
            mlflow.log_metric("x", 1)
    with tracking.start_cell_run(tracking.Link(), exp_id, "k2", "ann-adam-tanh", parent, {}):
        pass
    (run,) = tracking.find_runs(exp_id, {tracking.KEY_TAG: "k1"})
    assert run.data.metrics == {"x": 1}
    assert len(tracking.find_runs(exp_id, {tracking.KEY_TAG: "k2"})) == 1
    children = MlflowClient().search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(r.info.run_name for r in children) == ["ann-adam-relu", "ann-adam-tanh"]
    assert (
        tracking.find_runs(exp_id, {tracking.GRID_TAG: "g1", tracking.ROLE_TAG: "grid"})[0].info.run_id
        == parent
    )


def test_the_report_merges_grid_runs_that_two_machines_created() -> None:
    from mlflow.tracking import MlflowClient

    exp_id = tracking.experiment_id("demo")
    grid = {tracking.GRID_TAG: "g1", tracking.ROLE_TAG: "grid"}
    # Two machines' first cells each created the parent (the lock covers one machine only).
    first, second = (
        MlflowClient().create_run(exp_id, run_name="grid", tags=grid, start_time=t).info.run_id
        for t in (2000, 1000)
    )
    for parent, key in ((first, "k1"), (second, "k2")):
        with tracking.start_cell_run(tracking.Link(), exp_id, key, key, parent, {tracking.GRID_TAG: "g1"}):
            pass
    # A cell joins the oldest and leaves the rest alone: other cells may still be training.
    assert tracking.grid_run(exp_id, "g1", "grid", {}) == second
    assert len(tracking.find_runs(exp_id, grid)) == 2
    # The report, after every cell, keeps the oldest with every cell under it.
    assert tracking.grid_run(exp_id, "g1", "grid", {}, merge=True) == second
    assert [r.info.run_id for r in tracking.find_runs(exp_id, grid)] == [second]
    children = MlflowClient().search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{second}'")
    assert sorted(r.info.run_name for r in children) == ["k1", "k2"]
    # A cell still training on the other machine logs under the parent it was given, now
    # deleted: the next report moves it too.
    with tracking.start_cell_run(tracking.Link(), exp_id, "k3", "k3", first, {tracking.GRID_TAG: "g1"}):
        pass
    assert tracking.grid_run(exp_id, "g1", "grid", {}, merge=True) == second
    (late,) = tracking.find_runs(exp_id, {tracking.KEY_TAG: "k3"})
    assert late.data.tags["mlflow.parentRunId"] == second


def test_stages_on_one_machine_share_a_lock_per_tracking_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import filelock

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with tracking.store_lock("http://127.0.0.1:5000") as held:
        assert Path(held.lock_file).parent == tmp_path / "annlab" / "locks"
        # The same server, however its URI is written, is the same lock.
        for same in ("http://127.0.0.1:5000/", "http://annlab:s3cret@127.0.0.1:5000"):
            with pytest.raises(filelock.Timeout):
                tracking.store_lock(same).acquire(timeout=0)
        other = tracking.store_lock("http://127.0.0.1:5001")
        other.acquire(timeout=0)
        other.release()


def test_run_names_carry_the_seed_only_when_there_are_several() -> None:
    assert tracking.cell_run_name("ann-adam-relu", 42, [42]) == "ann-adam-relu"
    assert tracking.cell_run_name("ann-adam-relu", 2, [1, 2]) == "ann-adam-relu seed=2"


def test_interrupted_and_failed_runs_are_kept_as_such_and_finished_ones_replaced() -> None:
    exp_id = tracking.experiment_id("demo")
    parent = tracking.grid_run(exp_id, "g1", "grid one", {})
    with (
        pytest.raises(KeyboardInterrupt),
        tracking.start_cell_run(tracking.Link(), exp_id, "k", "cell", parent, {}),
    ):
        raise KeyboardInterrupt
    with (
        pytest.raises(Interrupted),
        tracking.start_cell_run(tracking.Link(), exp_id, "k", "cell", parent, {}),
    ):
        raise Interrupted("SIGTERM")
    with (
        pytest.raises(RuntimeError),
        tracking.start_cell_run(tracking.Link(), exp_id, "k", "cell", parent, {}),
    ):
        raise RuntimeError("a bug")
    for _ in range(2):  # the second replaces the first
        with tracking.start_cell_run(tracking.Link(), exp_id, "k", "cell", parent, {}):
            pass
    statuses = sorted(r.info.status for r in tracking.find_runs(exp_id, {tracking.KEY_TAG: "k"}))
    assert statuses == ["FAILED", "FINISHED", "KILLED", "KILLED"]


def _dead_uri() -> str:
    """An http URI on a loopback port that nothing listens on."""
    return f"http://annlab:s3cret@127.0.0.1:{free_port()}"


def test_passwords_are_masked_in_what_annlab_prints() -> None:
    assert (
        tracking.redact("https://alice:pa:ss@mlflow.example.com/x")
        == "https://alice:***@mlflow.example.com/x"
    )
    assert tracking.redact("https://tok3n@mlflow.example.com") == "https://***@mlflow.example.com"
    assert tracking.redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert tracking.redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    uri = _dead_uri()
    with pytest.raises(UserError) as err:
        tracking.check_server(uri)
    assert "s3cret" not in str(err.value) and "annlab:***@127.0.0.1" in str(err.value)


# A server that accepts connections at once but answers /health only after DELAY seconds.
SLOW_SERVER = """
import http.server, sys, time
class Slow(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(float(sys.argv[2]))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Slow).serve_forever()
"""


@pytest.mark.slow
def test_a_busy_server_is_waited_for_as_long_as_mlflow_waits_and_a_silent_one_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Eight pipelines logging at once on two cores kept a real server from answering within 5 s,
    and the stage gave up on a server that was there (CI)."""
    import socket

    port = int(_dead_uri().rsplit(":", 1)[1])
    server = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, str(port), "6"])
    try:
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        uri = f"http://127.0.0.1:{port}"
        monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
        assert tracking.unreachable(uri) is None  # 6 s: busy, not gone
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
        started = time.monotonic()
        assert tracking.unreachable(uri) == "ReadTimeout"
        assert time.monotonic() - started < 3
    finally:
        server.kill()
        server.wait()


def test_a_lost_server_is_reported_once_and_later_calls_are_skipped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    link = tracking.Link(_dead_uri())
    calls = []

    def log(value: int) -> int:
        calls.append(value)
        raise ConnectionError("connection refused")

    assert link.call(log, 1) is None
    assert link.call(log, 2) is None
    assert calls == [1]  # after the loss, nothing more is tried
    assert not link.up and "lost (ConnectionError)" in link.lost
    err = capsys.readouterr().err
    assert err.count("was lost") == 1 and "annlab sync" in err and "s3cret" not in err


def test_errors_from_a_store_that_answers_are_raised(mlflow_store: str) -> None:
    link = tracking.Link(mlflow_store)  # a SQLite file is never "lost"
    assert link.call(lambda: 3) == 3

    def broken() -> None:
        raise ValueError("a bug, not a network fault")

    with pytest.raises(ValueError):
        link.call(broken)
    assert link.up


def test_offline_skips_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tracking.OFFLINE_ENV, "1")
    link = tracking.Link()
    assert not link.up and link.call(lambda: 1 / 0) is None
    monkeypatch.setenv(tracking.OFFLINE_ENV, "0")
    assert tracking.Link().up
