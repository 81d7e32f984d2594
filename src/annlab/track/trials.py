"""A cell's tuning trials from its previous training, found through dvc.lock and DVC's cache.

The trials see the tuning seed's split only. Adding seeds after the tuning seed changes the
cell's params (`grid.seeds`) and the processed data (a split per new seed), so DVC runs the
cell's stage again; the stage then takes its trials, and the tuning seed's run at the chosen
rate, from its previous outputs when nothing they depend on has changed (`tuning_key`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import annlab
from annlab import io

KEY = "tuning_key"  # in choice.json


def code_digest() -> str:
    """SHA-256 of annlab's source: any change to it trains the trials again."""
    h = hashlib.sha256()
    root = Path(annlab.__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


TRIAL_FILES = ("x_train.npy", "y_train.npy", "x_val.npy", "y_val.npy", "preprocessing.json")


def split_digest(split: Path) -> str:
    """SHA-256 of what a trial reads of one split: its training and validation arrays and the
    preprocessing fitted on them (not the test split, which plays no part in the choice)."""
    h = hashlib.sha256()
    for path in sorted(split / name for name in TRIAL_FILES if (split / name).is_file()):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def tuning_key(cell: str, logged: dict[str, Any], split: Path, info: dict[str, Any]) -> str:
    """Equal exactly when a cell's trials would train again on the same inputs: its params as the
    tuning seed's run logs them (no grid lists), the tuning seed's split, what the dataset is, and
    annlab's code."""
    dataset = {k: v for k, v in info.items() if k != "split_seeds"}
    blob = json.dumps(
        {
            "cell": cell,
            "params": logged,
            "split": split_digest(split),
            "dataset": dataset,
            "code": code_digest(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _manifest(cache: Any, out: dict[str, Any]) -> dict[str, Path] | None:
    """A directory output's files in the cache (relative path → cache file); None if any is missing."""
    listing = Path(cache.oid_to_path(out["md5"]))
    if not listing.is_file():
        return None
    files = {
        entry["relpath"]: Path(cache.oid_to_path(entry["md5"])) for entry in json.loads(listing.read_text())
    }
    return files if all(p.is_file() for p in files.values()) else None


def previous(
    stage: str, tuning_dir: Path, key: str, root: Path = Path(".")
) -> dict[Path, dict[str, Path]] | None:
    """The outputs of the stage's last run as dvc.lock records them (out path → its files in DVC's
    cache), when that run's choice.json in `tuning_dir` carries `key` and the cache holds every
    file; None otherwise (no lock entry, another key, a cache without them, no DVC here). DVC is
    imported only when dvc.lock has an entry for the stage with its trials."""
    lock_path = root / "dvc.lock"
    if not lock_path.is_file():
        return None
    try:
        outs = (io.read_yaml(lock_path) or {}).get("stages", {}).get(stage, {}).get("outs") or []
        outs = [out for out in outs if "md5" in out]
        if not any(Path(out["path"]) == Path(tuning_dir) for out in outs):
            return None
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            cache = repo.cache.local
            by_path = {Path(out["path"]): out for out in outs}
            tuning = _manifest(cache, by_path[Path(tuning_dir)])
            if (
                tuning is None
                or "choice.json" not in tuning
                or io.read_json(tuning["choice.json"]).get(KEY) != key
            ):
                return None
            files = {path: _manifest(cache, out) for path, out in by_path.items()}
    except Exception as exc:
        print(f"train: {stage}: the previous trials could not be read ({exc}); training them")
        return None
    if any(f is None for f in files.values()):
        return None
    return files  # type: ignore[return-value]
