"""Where a Ray worker logs: the driver's store when it can reach it, nobody (the report files the
run from the outputs) when it cannot."""

from __future__ import annotations

import dataclasses
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from annlab.track import store
from conftest import free_port


@pytest.fixture
def sqlite_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    (tmp_path / "runs").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv(store.OFFLINE_ENV, raising=False)
    return uri


@pytest.fixture
def health_server() -> Iterator[str]:
    """A tracking server stand-in on 127.0.0.1 that answers /health."""

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_worker_on_the_drivers_machine_logs_to_its_sqlite_store(sqlite_store: str) -> None:
    place = store.place()
    assert place is not None and place.uri == sqlite_store and place.folder is not None
    assert store.reach(place) == sqlite_store


def test_a_worker_on_another_machine_or_in_another_folder_does_not_log_to_a_sqlite_store(
    sqlite_store: str, tmp_path: Path
) -> None:
    place = store.place()
    assert place is not None
    assert store.reach(dataclasses.replace(place, machine="elsewhere/0000")) is None
    # The same path on the same kernel, but another folder (a container's own file system):
    # here, the folder was replaced since the driver looked.
    (tmp_path / "runs").rename(tmp_path / "old")
    (tmp_path / "runs").mkdir()
    assert store.reach(place) is None


def test_a_worker_logs_to_a_server_it_reaches_and_to_a_loopback_one_only_on_its_machine(
    health_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", health_server)
    monkeypatch.delenv(store.OFFLINE_ENV, raising=False)
    place = store.place()
    assert place is not None and place.folder is None
    assert store.reach(place) == health_server
    # 127.0.0.1 seen from another machine is that machine, not the driver's server
    assert store.reach(dataclasses.replace(place, machine="elsewhere/0000")) is None


@pytest.mark.parametrize(
    ("uri", "local_only"),
    [
        ("http://127.0.0.1:5000", True),
        ("http://localhost:5000", True),
        ("http://[::1]:5000", True),
        ("http://0.0.0.0:5000", True),  # every address of this machine: none of another's
        ("https://user:secret@127.0.0.2/mlflow", True),
        ("http://192.0.2.7:5000", False),  # another machine's address (TEST-NET-1)
    ],
)
def test_a_server_on_an_address_of_the_drivers_own_is_for_its_machine_only(
    uri: str, local_only: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv(store.OFFLINE_ENV, raising=False)
    place = store.place()
    assert place is not None and place.local_only is local_only


def test_the_drivers_mlflow_settings_go_to_its_workers_but_not_into_messages(
    sqlite_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    place = store.place()
    assert place is not None
    assert ("MLFLOW_TRACKING_PASSWORD", "s3cret") in place.env and (
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
        "7",
    ) in place.env
    assert "MLFLOW_TRACKING_URI" not in dict(place.env)  # the workers get the resolved URI itself
    assert "s3cret" not in repr(place)


def test_a_sqlite_stores_folder_is_made_so_that_workers_can_find_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}")
    monkeypatch.delenv(store.OFFLINE_ENV, raising=False)
    place = store.place()
    assert (tmp_path / "new").is_dir() and store.reach(place) == place.uri


def test_a_worker_does_not_log_to_a_server_that_is_down_or_to_other_stores() -> None:
    down = f"http://127.0.0.1:{free_port()}"
    assert store.reach(store.Place(down, store.machine(), "abc")) is None
    database = "postgresql://annlab@db.example.invalid/mlflow"
    assert store.reach(store.Place(database, store.machine(), "abc")) is None


def test_offline_stages_give_their_workers_no_store(
    sqlite_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(store.OFFLINE_ENV, "1")
    assert store.place() is None
    assert store.reach(None) is None


def test_a_workers_runs_record_the_drivers_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(store.SOURCE_COMMIT_ENV, raising=False)
    assert store.git_commit(tmp_path) == "unknown"  # not a git repository
    monkeypatch.setenv(store.SOURCE_COMMIT_ENV, "0123456789abcdef")
    assert store.git_commit(tmp_path) == "0123456789abcdef"
