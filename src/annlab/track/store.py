"""Where the runs go: the MLflow store's URI, whether the stages log at all, and whether a
process (a Ray worker on another machine, say) can reach the store the driver logs to.

Nothing here imports MLflow: `make repro` and the Ray driver use it without paying for that.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path


def repo_root() -> Path:
    """The project root: DVC sets $DVC_ROOT for stages (the parent repo, for queued experiments)."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


SQLITE = "sqlite:///"


def sqlite_path(uri: str) -> Path | None:
    """A SQLite store's database file; None for other stores."""
    return Path(uri.removeprefix(SQLITE)) if uri.startswith(SQLITE) else None


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the project's SQLite store at the repository root.

    A relative SQLite path is taken from the repository root, so every stage (and every
    queued experiment, which runs in a temporary copy) writes to the same file.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE}{repo_root() / 'mlflow.db'}"
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        uri = f"{SQLITE}{repo_root() / uri.removeprefix(SQLITE)}"
    return uri


# MLflow's client retries an unreachable server 7 times with a doubling back-off, minutes in
# all; annlab gives up sooner, unless the environment says otherwise.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
OFFLINE_ENV = "ANNLAB_OFFLINE"


def offline() -> bool:
    """Whether $ANNLAB_OFFLINE asks the stages to leave MLflow alone (`annlab sync` uploads later)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def redact(uri: str) -> str:
    """`uri` with any password in it masked, fit for a message or a log."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None:
        return uri
    _, host = parts.netloc.rsplit("@", 1)
    user = "***" if parts.password is None else f"{parts.username}:***"  # a bare token is the secret
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def is_server(uri: str) -> bool:
    """Whether `uri` names a tracking server (over the network) rather than a local store."""
    return uri.startswith(("http://", "https://"))


def unreachable(uri: str) -> str | None:
    """Why a tracking server cannot be reached (e.g. 'ConnectionError'), or None if it answers.

    Connecting gets 5 s. A server that accepted the connection is there but may be busy (eight
    pipelines logging at once on two cores): its answer gets as long as MLflow's own requests
    do ($MLFLOW_HTTP_REQUEST_TIMEOUT). An HTTP answer counts as reachable (an auth error then
    comes from MLflow, with its own message), except a gateway's 502, 503 or 504: a proxy
    answering for a server that is down.
    """
    import requests

    key = "MLFLOW_HTTP_REQUEST_TIMEOUT"
    read = float(os.environ.get(key) or HTTP_DEFAULTS[key])
    try:
        answer = requests.get(f"{uri.rstrip('/')}/health", timeout=(5.0, read))
    except requests.RequestException as exc:
        return type(exc).__name__
    return f"HTTP {answer.status_code}" if answer.status_code in (502, 503, 504) else None


SOURCE_COMMIT_ENV = "ANNLAB_SOURCE_COMMIT"  # the driver's commit, for workers outside its repository


def git_commit(cwd: Path | None = None) -> str:
    """The checked-out commit ($ANNLAB_SOURCE_COMMIT on a Ray worker), or 'unknown' outside git."""
    if commit := os.environ.get(SOURCE_COMMIT_ENV):
        return commit
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def machine() -> str:
    """This machine: its host name and the id of its running kernel (new at each boot)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        boot = "?"
    return f"{socket.gethostname()}/{boot}"


@dataclass(frozen=True)
class Place:
    """The store the driver's stages log to, as a worker elsewhere can check that it reaches it."""

    uri: str
    machine: str  # the driver's `machine()`
    commit: str  # the driver's checked-out commit, which its workers' runs record
    folder: tuple[int, int] | None = None  # a SQLite store's folder: (device, inode)
    local_only: bool = False  # a server at an address of the driver's own (loopback)
    # The driver's MLflow settings, credentials included, for the task to set while it runs
    # (not Ray's runtime env, which Ray shows in its dashboard and job records).
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)


def _folder_id(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _own_address(uri: str) -> bool:
    """Whether a server's host is an address of this machine's own that no other machine shares:
    a loopback or unspecified address, or a name that resolves to one here."""
    host = urllib.parse.urlsplit(uri).hostname or ""
    try:
        found = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found}
    return any(a.is_loopback or a.is_unspecified for a in addresses)


def place() -> Place | None:
    """The driver's store, for its Ray workers; None when the stages log nothing ($ANNLAB_OFFLINE)."""
    if offline():
        return None
    uri = tracking_uri()
    folder = None
    if (db := sqlite_path(uri)) is not None:
        db.parent.mkdir(parents=True, exist_ok=True)  # as the first stage to log would
        folder = _folder_id(db.parent)
    settings = (k for k in os.environ if k.startswith("MLFLOW_") and k != "MLFLOW_TRACKING_URI")
    env = tuple(sorted((k, os.environ[k]) for k in settings))
    return Place(uri, machine(), git_commit(), folder, is_server(uri) and _own_address(uri), env)


def reach(place: Place | None) -> str | None:
    """The store's URI if this process can reach it as the driver does; None if not (the
    driver's report stage then files the run from the DVC outputs).

    A SQLite file can be reached on the driver's machine only, in the same folder there (not a
    container's own file at the same path), if this process may write there. A tracking server
    must answer; one at an address of the driver's own only on the driver's machine. Other
    stores (a database server, say) are left to the driver.
    """
    if place is None:
        return None
    here = machine() == place.machine
    if (db := sqlite_path(place.uri)) is not None:
        same = here and place.folder is not None and _folder_id(db.parent) == place.folder
        writable = os.access(db.parent, os.W_OK) and (not db.exists() or os.access(db, os.W_OK))
        return place.uri if same and writable else None
    if is_server(place.uri) and (here or not place.local_only) and unreachable(place.uri) is None:
        return place.uri
    return None
