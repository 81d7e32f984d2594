"""MLflow plumbing: which store, which experiment, and the one run that belongs to a cell.

Stages find a cell's run by a deterministic key (tag `annlab.key`), never by a run id
written into DVC-tracked files, so reruns with the same inputs replace rather than pile up.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

KEY_TAG = "annlab.key"
CELL_TAG = "annlab.cell"
STAGE_TAG = "annlab.stage"
DATASET_TAG = "annlab.dataset"


def repo_root() -> Path:
    """The project root: DVC sets $DVC_ROOT for stages (the parent repo, for queued experiments)."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


SQLITE = "sqlite:///"


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the project's SQLite store at the repository root.

    A relative SQLite path is taken from the repository root, so every stage (and every
    queued experiment, which runs in a temporary copy) writes to the same file.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE}{repo_root() / 'mlflow.db'}"
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        uri = f"{SQLITE}{repo_root() / uri.removeprefix(SQLITE)}"
    return uri


def stage_tag(default: str) -> dict[str, str]:
    """The DVC stage that logs (DVC sets $DVC_STAGE; `default` when a stage runs by hand)."""
    return {STAGE_TAG: os.environ.get("DVC_STAGE", default)}


def run_key(cell: str, params: dict[str, Any], data_digest: str) -> str:
    """A key that is equal exactly when a cell is trained again on the same inputs."""
    blob = json.dumps({"cell": cell, "params": params, "data": data_digest}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def git_commit(cwd: Path | None = None) -> str:
    """The checked-out commit, or 'unknown' outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def experiment_id(name: str) -> str:
    """Point MLflow at the store and return the experiment's id, creating it if needed."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith(SQLITE):
        # Next to the database, not under whatever directory the stage happens to run in
        # (queued experiments run in temporary copies of the repo).
        location = (Path(uri.removeprefix(SQLITE)).parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        # Another stage created it first.
        return client.get_experiment_by_name(name).experiment_id


def find_runs(exp_id: str, key: str) -> list[Run]:
    """The live runs carrying `key`, newest first."""
    return MlflowClient().search_runs(
        [exp_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'", order_by=["attributes.start_time DESC"]
    )


def _new_run(exp_id: str, key: str, cell: str, tags: dict[str, str]) -> mlflow.ActiveRun:
    return mlflow.start_run(experiment_id=exp_id, run_name=cell, tags={KEY_TAG: key, CELL_TAG: cell, **tags})


def start_cell_run(exp_id: str, key: str, cell: str, tags: dict[str, str]) -> mlflow.ActiveRun:
    """Start the run of a cell, deleting earlier runs of the same cell and inputs."""
    client = MlflowClient()
    for old in find_runs(exp_id, key):
        client.delete_run(old.info.run_id)
    return _new_run(exp_id, key, cell, tags)


def resume_cell_run(exp_id: str, key: str, cell: str, tags: dict[str, str]) -> mlflow.ActiveRun:
    """Reopen the run that trained this cell; start one if the store lost it."""
    runs = find_runs(exp_id, key)
    if runs:
        return mlflow.start_run(run_id=runs[0].info.run_id)
    print(f"warning: no MLflow run found for {cell} (key {key}); starting a new one")
    return _new_run(exp_id, key, cell, tags)


def pip_requirements() -> list[str]:
    """Pinned requirements of a logged Keras model, given so MLflow need not infer them (slow)."""
    reqs = []
    for dist in ("keras", "tensorflow-cpu", "tensorflow", "numpy"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return reqs
