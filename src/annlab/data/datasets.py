"""Where each dataset comes from: digits from scikit-learn, the rest downloaded with pooch."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from annlab.errors import FetchError

# The public files Keras' own loaders use; the SHA-256s pin their exact bytes.
KERAS_DATASETS_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
MIRROR_ENV = "ANNLAB_DATA_URL"
CACHE_ENV = "ANNLAB_CACHE_DIR"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a downloadable dataset."""

    name: str
    sha256: str


REMOTE: dict[str, tuple[RemoteFile, ...]] = {
    "mnist": (RemoteFile("mnist.npz", "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"),),
    "fashion_mnist": (
        RemoteFile(
            "train-images-idx3-ubyte.gz",
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        ),
        RemoteFile(
            "train-labels-idx1-ubyte.gz",
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        ),
        RemoteFile(
            "t10k-images-idx3-ubyte.gz",
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        ),
        RemoteFile(
            "t10k-labels-idx1-ubyte.gz",
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        ),
    ),
}

CLASS_NAMES: dict[str, list[str]] = {
    "digits": [str(i) for i in range(10)],
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
}  # fmt: skip


def cache_dir() -> Path:
    """Where downloads are kept between runs: $ANNLAB_CACHE_DIR or the OS cache folder."""
    import pooch

    return Path(os.environ.get(CACHE_ENV) or pooch.os_cache("annlab"))


def base_url() -> str:
    """The download base URL: $ANNLAB_DATA_URL (a mirror) or the public Keras datasets bucket."""
    url = os.environ.get(MIRROR_ENV) or KERAS_DATASETS_URL
    return url if url.endswith("/") else url + "/"


def download(dataset: str, *, url: str | None = None, cache: Path | None = None) -> dict[str, Path]:
    """Download (or reuse from the cache) every file of `dataset`, verified by SHA-256."""
    import pooch
    import requests

    url = url or base_url()
    cache = cache or cache_dir() / dataset
    paths = {}
    for remote in REMOTE[dataset]:
        source = url + remote.name
        try:
            # pooch downloads to a temporary file and moves it into the cache only once the
            # hash matches, so a corrupt or truncated download never enters the cache.
            paths[remote.name] = Path(
                pooch.retrieve(
                    source,
                    known_hash=f"sha256:{remote.sha256}",
                    fname=remote.name,
                    path=cache,
                    progressbar=True,
                )
            )
        except ValueError as exc:
            raise FetchError(
                f"{source}: the download does not match its pinned SHA-256 "
                f"({remote.sha256[:12]}…); it was not cached. Details: {exc}"
            ) from None
        except requests.RequestException as exc:
            raise FetchError(
                f"{source}: download failed ({type(exc).__name__}: {exc}). Are you offline? "
                f"Use data.dataset: digits (bundled, offline), or set {MIRROR_ENV} to a mirror, "
                f"or put the file in {cache}."
            ) from None
    return paths


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits as uint8 images (values 0-16) and labels."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return bunch.images.astype(np.uint8), bunch.target.astype(np.int64)


def read_mnist_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Keras' mnist.npz, its train and test parts joined (annlab splits them itself)."""
    with np.load(path, allow_pickle=False) as npz:
        images = np.concatenate([npz["x_train"], npz["x_test"]])
        labels = np.concatenate([npz["y_train"], npz["y_test"]])
    return images.astype(np.uint8), labels.astype(np.int64)


def read_idx(path: Path) -> np.ndarray:
    """A gzipped IDX file (the MNIST family's format) as an array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise FetchError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def read_fashion_mnist(paths: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's four IDX files, train and test parts joined."""
    images = np.concatenate(
        [read_idx(paths["train-images-idx3-ubyte.gz"]), read_idx(paths["t10k-images-idx3-ubyte.gz"])]
    )
    labels = np.concatenate(
        [read_idx(paths["train-labels-idx1-ubyte.gz"]), read_idx(paths["t10k-labels-idx1-ubyte.gz"])]
    )
    return images, labels.astype(np.int64)


def load(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole dataset as (images, labels), downloading if it is not bundled."""
    if dataset == "digits":
        return load_digits()
    paths = download(dataset)
    if dataset == "mnist":
        return read_mnist_npz(paths["mnist.npz"])
    return read_fashion_mnist(paths)
