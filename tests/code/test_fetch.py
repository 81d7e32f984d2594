"""Download tests against a server on 127.0.0.1 that the test starts, serving files it generates."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io as stdio
import threading
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import pytest

from annlab.data import datasets
from annlab.data.datasets import FetchError, RemoteFile
from annlab.stages import fetch
from conftest import free_port


class _Handler(http.server.BaseHTTPRequestHandler):
    # Each test gets a fresh subclass (see `server`), so these are per test.
    files: ClassVar[dict[str, bytes]] = {}
    truncate: ClassVar[set[str]] = set()
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        self.hits.append(name)
        body = self.files.get(name)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # A truncated file: announce the full length, send half, close the connection.
        self.wfile.write(body[: len(body) // 2] if name in self.truncate else body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[type[_Handler]]:
    handler = type("Handler", (_Handler,), {"files": {}, "truncate": set(), "hits": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    yield handler
    httpd.shutdown()
    httpd.server_close()


def _mnist_npz(n_train: int = 30, n_test: int = 10) -> bytes:
    rng = np.random.default_rng(0)
    buf = stdio.BytesIO()
    np.savez(
        buf,
        x_train=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        y_train=np.arange(n_train, dtype=np.uint8) % 10,
        x_test=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        y_test=np.arange(n_test, dtype=np.uint8) % 10,
    )
    return buf.getvalue()


def _idx_gz(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def _pin(monkeypatch: pytest.MonkeyPatch, dataset: str, files: dict[str, bytes]) -> None:
    pinned = tuple(RemoteFile(name, hashlib.sha256(body).hexdigest()) for name, body in files.items())
    monkeypatch.setitem(datasets.REMOTE, dataset, pinned)


def test_good_checksum_is_cached_and_reused(server, tmp_path, monkeypatch) -> None:
    body = _mnist_npz()
    server.files["mnist.npz"] = body
    _pin(monkeypatch, "mnist", {"mnist.npz": body})
    paths = datasets.download("mnist", url=server.url, cache=tmp_path)
    assert paths["mnist.npz"].read_bytes() == body
    assert server.hits == ["mnist.npz"]
    datasets.download("mnist", url=server.url, cache=tmp_path)
    assert server.hits == ["mnist.npz"], "a cached file must not be downloaded again"


def test_bad_checksum_is_refused_and_not_cached(server, tmp_path, monkeypatch) -> None:
    server.files["mnist.npz"] = _mnist_npz()
    monkeypatch.setitem(datasets.REMOTE, "mnist", (RemoteFile("mnist.npz", "0" * 64),))
    with pytest.raises(FetchError, match="does not match its pinned SHA-256"):
        datasets.download("mnist", url=server.url, cache=tmp_path)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_truncated_download_is_refused_and_not_cached(server, tmp_path, monkeypatch) -> None:
    body = _mnist_npz(n_train=300)
    server.files["mnist.npz"] = body
    server.truncate.add("mnist.npz")
    _pin(monkeypatch, "mnist", {"mnist.npz": body})
    with pytest.raises(FetchError, match=r"mnist\.npz"):
        datasets.download("mnist", url=server.url, cache=tmp_path)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_offline_names_the_url_and_the_way_out(tmp_path, monkeypatch) -> None:
    port = free_port()  # nobody listens on it
    _pin(monkeypatch, "mnist", {"mnist.npz": b"x"})
    with pytest.raises(FetchError) as err:
        datasets.download("mnist", url=f"http://127.0.0.1:{port}/", cache=tmp_path)
    assert f"127.0.0.1:{port}/mnist.npz" in str(err.value)
    assert "ANNLAB_DATA_URL" in str(err.value)


def test_fetch_stage_writes_mnist_from_a_mirror(server, tmp_path, monkeypatch) -> None:
    body = _mnist_npz()
    server.files["mnist.npz"] = body
    _pin(monkeypatch, "mnist", {"mnist.npz": body})
    monkeypatch.setenv("ANNLAB_DATA_URL", server.url)
    monkeypatch.setenv("ANNLAB_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "params.yaml").write_text("data:\n  dataset: mnist\n")
    out = tmp_path / "raw"
    fetch.main(["--params", str(tmp_path / "params.yaml"), "--out", str(out)])
    images, labels = np.load(out / "x.npy"), np.load(out / "labels.npy")
    assert images.shape == (40, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.concatenate([np.arange(30) % 10, np.arange(10) % 10]))


def test_fashion_mnist_idx_files_are_parsed(server, tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(1)
    files = {
        "train-images-idx3-ubyte.gz": _idx_gz(rng.integers(0, 256, (6, 28, 28))),
        "train-labels-idx1-ubyte.gz": _idx_gz(np.arange(6) % 10),
        "t10k-images-idx3-ubyte.gz": _idx_gz(rng.integers(0, 256, (4, 28, 28))),
        "t10k-labels-idx1-ubyte.gz": _idx_gz(np.array([9, 8, 7, 6])),
    }
    server.files.update(files)
    _pin(monkeypatch, "fashion_mnist", files)
    paths = datasets.download("fashion_mnist", url=server.url, cache=tmp_path)
    images, labels = datasets.read_fashion_mnist(paths)
    assert images.shape == (10, 28, 28)
    assert labels.tolist() == [0, 1, 2, 3, 4, 5, 9, 8, 7, 6]


def test_pinned_checksums_are_sha256() -> None:
    for files in datasets.REMOTE.values():
        for remote in files:
            assert len(remote.sha256) == 64 and int(remote.sha256, 16) >= 0
