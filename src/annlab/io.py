"""Small file helpers: atomic writes, NumPy arrays without pickle, deterministic JSON."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annlab.errors import UserError

if TYPE_CHECKING:  # NumPy is imported where arrays are handled, so `validate` starts faster
    import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` and move it into place only if the block succeeds.

    An interrupted stage then leaves either the old output or none, never half a file
    that DVC (or a person) would take as finished. Works for files and directories.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def dumps_json(data: Any) -> str:
    """JSON with sorted keys and a final newline, so equal data gives equal bytes."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically and deterministically."""
    write_text(path, dumps_json(data))


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def seed_name(seed: int) -> str:
    """How a seed's file or folder is named in a cell's outputs: `seed-<n>`."""
    return f"seed-{seed}"


def by_seed(paths: Iterable[Path]) -> dict[int, Path]:
    """The `seed-<n>` paths among `paths` (suffixes ignored), keyed by seed, in seed order."""
    named = {int(p.name.split(".")[0].removeprefix("seed-")): p for p in paths if p.name.startswith("seed-")}
    return dict(sorted(named.items()))


def save_arrays(directory: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Save each array as `<name>.npy` in `directory` (plain .npy: no pickle, byte-reproducible)."""
    import numpy as np

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)


def save_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """An .npz as `np.savez` writes it, but byte-reproducible: numpy stamps each member with the
    time of writing, this with a fixed date (so DVC sees no change when nothing changed)."""
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)


def load_array(directory: str | Path, name: str) -> np.ndarray:
    """Load `<name>.npy` from `directory`, refusing pickled objects (loading them runs code)."""
    import numpy as np

    path = Path(directory) / f"{name}.npy"
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise
        raise UserError(f"{path}: holds pickled Python objects, which annlab never loads") from None


def read_yaml(path: str | Path) -> Any:
    """A YAML file as plain data, with PyYAML's C loader (dvc.lock is tens of KB, read on every
    `make repro` and by each tuned cell)."""
    import yaml

    return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)


def load_npz(path: str | Path, what: str = "a NumPy .npz file") -> dict[str, Any]:
    """Every array of an .npz file, refusing pickled objects (loading them runs code) and
    anything that is not an .npz with one clear UserError naming the file."""
    import zipfile
    import zlib

    import numpy as np

    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):  # np.load would take any other bytes for a pickle
        raise UserError(f"{path}: not {what} (it is no zip archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise UserError(f"{path}: holds pickled Python objects, which annlab never loads") from None
        raise UserError(f"{path}: not {what} ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise UserError(f"{path}: not {what} ({type(exc).__name__}: {exc})") from None


def data_digest(data_dir: Path) -> str:
    """SHA-256 of the processed arrays and their description (the files are byte-reproducible),
    per-seed splits included."""
    h = hashlib.sha256()
    root = Path(data_dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def split_dir(data_dir: str | Path, seed: int) -> Path:
    """Where a seed's split lives: `seed-<n>/` when preprocess drew one split per seed
    (data.split_per_seed), else the one split at the top of `data_dir`."""
    per_seed = Path(data_dir) / seed_name(seed)
    return per_seed if per_seed.is_dir() else Path(data_dir)
