"""`make bench`: annlab beside the tutorial's plain Keras code, in one run; writes
reports/benchmarks.md (medians, min/max, ratios, the machine).

Measured, each side in fresh processes so that every run pays what a user pays:
- training throughput: the tutorial's MNIST MLP (784-128-64-10, batch 32, Adam) with plain
  `fit` vs annlab's training at the same hyperparameters and seed, on MNIST-shaped synthetic data;
- the whole default pipeline (`make repro`, from a clone with no outputs, no DVC cache and an
  empty MLflow store) vs the tutorial's digits script run once per grid cell;
- a no-op `dvc repro`; the peak memory of each stage; MLflow's cost per run.

`--smoke` runs every part on tiny sizes (the test suite does, to keep this script working).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SEED = 42


def synthetic_mnist_arrays(n_train: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """MNIST-shaped data: 28x28 uint8 images of 10 classes, each a faint class template under
    uniform noise, so that a 784-128-64-10 MLP learns it to about 90-95 % in a few epochs;
    keyed as MNIST's .npz file (x_train, y_train, x_test, y_test)."""
    rng = np.random.default_rng(seed)
    templates = rng.random((10, 28, 28))
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, 10, n)
        x = 0.12 * templates[y] + 0.88 * rng.random((n, 28, 28))
        arrays[f"x_{split}"], arrays[f"y_{split}"] = (x * 255).astype(np.uint8), y.astype(np.uint8)
    return arrays


def synthetic_mnist(path: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """`synthetic_mnist_arrays`, written to an .npz file at `path`."""
    np.savez(path, **synthetic_mnist_arrays(n_train, n_test, seed))


def scaled_mnist(arrays: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x, y, x_test, y_test of MNIST-keyed `arrays` (a dict or an open .npz file) as annlab's
    preprocess gives them: flat float32 images in [0, 1] (its minmax scaling), one-hot labels."""
    from annlab.report.metrics import one_hot

    x, xt = (arrays[k].reshape(len(arrays[k]), -1).astype(np.float32) / 255 for k in ("x_train", "x_test"))
    return x, one_hot(arrays["y_train"], 10), xt, one_hot(arrays["y_test"], 10)


def annlab_mlp_model(n_train: int, seed: int, speed: Any) -> Any:
    """The tutorial's 784-128-64-10 MLP as annlab builds and compiles it (Adam, ReLU, batch 32),
    seeded; `speed` is an `annlab.train.speed.Speed`."""
    from annlab.params import Params
    from annlab.train import model as annmodel

    params = Params.model_validate({"model": {"hidden_units": [128, 64]}, "train": {"batch_size": 32}})
    annmodel.seed_everything(seed)
    return annmodel.compiled_model(params.for_cell("ann", "adam", "relu"), (28, 28), 10, speed, n_train)


def epoch_timer(seconds: list[float]) -> Any:
    """A Keras callback that appends each epoch's seconds (validation included) to `seconds`."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            seconds.append(time.perf_counter() - self.started)

    return EpochTimer()


def annlab_mlp(data_path: str, epochs: int, seed: int) -> None:
    """annlab's training of the tutorial's MLP (what the train stage runs), as JSON on stdout."""
    from annlab.train import model as annmodel
    from annlab.train.speed import Speed

    speed = Speed.from_env()
    annmodel.configure(speed)
    with np.load(data_path) as f:
        x, y, xt, yt = scaled_mnist(f)
    model = annlab_mlp_model(len(x), seed, speed)
    seconds: list[float] = []
    annmodel.fit(
        model, (x, y), (xt, yt), epochs, 32, callbacks=[epoch_timer(seconds)], verbose=0, speed=speed
    )
    _, accuracy = model.evaluate(xt, yt, verbose=0)
    print(json.dumps({"seconds_per_epoch": seconds, "test_accuracy": float(accuracy)}))


def mlflow_overhead(runs: int) -> None:
    """MLflow's cost, in one warm process: importing it, opening the store, and logging one
    training run the way the train and report stages do, against not logging it. JSON out."""
    started = time.perf_counter()
    import mlflow

    imported = time.perf_counter() - started
    from annlab.params import Params
    from annlab.track import tracking
    from annlab.train import model as annmodel
    from annlab.train.speed import Speed

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        started = time.perf_counter()
        exp_id = tracking.experiment_id("bench")
        opened = time.perf_counter() - started
        params = Params().for_cell("ann", "adam", "relu")
        model = annmodel.compiled_model(params, (8, 8), 10, Speed(), 1000)
        x = np.random.default_rng(0).random((1000, 64)).astype(np.float32)
        history = {k: [0.5] * params.train.epochs for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
        figures = [Path(tmp) / name for name in ("curves.png", "confusion_matrix.png")]
        for png in figures:  # the size of the stage's figures
            png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(50_000))
        per_run, nothing = [], []
        for i in range(runs):
            started = time.perf_counter()
            with mlflow.start_run(experiment_id=exp_id, run_name=f"run {i}"):
                mlflow.log_params(tracking.cell_params(params, "ann", "adam", "relu", SEED))
                for split in ("training", "validation", "testing"):
                    mlflow.log_input(mlflow.data.from_numpy(x, name=split), context=split)
                for epoch in range(params.train.epochs):
                    mlflow.log_metrics({k: v[epoch] for k, v in history.items()}, step=epoch + 1)
                mlflow.log_metrics({"test_accuracy": 0.9, "test_loss": 0.1, "macro_f1": 0.9})
                mlflow.log_text("summary", "model_summary.txt")
                for png in figures:
                    mlflow.log_artifact(str(png), artifact_path="plots")
                signature = mlflow.models.infer_signature(x[:5], model.predict(x[:5], verbose=0))
                mlflow.keras.log_model(
                    model, name="model", signature=signature, pip_requirements=tracking.pip_requirements()
                )
            per_run.append(time.perf_counter() - started)
            started = time.perf_counter()
            model.save(Path(tmp) / "model.keras")  # what a run does without MLflow: keep the model
            nothing.append(time.perf_counter() - started)
    print(json.dumps({"import": imported, "open_store": opened, "per_run": per_run, "nothing": nothing}))


def _python(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> dict[str, Any]:
    """Run this interpreter on `args` in a fresh process; its last stdout line, as JSON."""
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
    )
    if proc.returncode:
        raise SystemExit(f"bench: {' '.join(args[:2])} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall seconds of a command that must succeed (its output goes to a log in `cwd`)."""
    started = time.perf_counter()
    with open(cwd / "bench.log", "a", encoding="utf-8") as log:
        proc = subprocess.run(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"bench: {' '.join(command)} failed in {cwd}; see {cwd / 'bench.log'}")
    return time.perf_counter() - started


def stats(values: list[float]) -> dict[str, float]:
    """Median, min and max."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def bench_training(repeats: int, epochs: int, n_train: int, n_test: int, tmp: Path) -> dict[str, Any]:
    """Seconds per epoch (median over the epochs after the first, which traces the graph) and
    final test accuracy: the tutorial's plain fit as it is and with annlab's intra-op thread
    count (the same rounding, so the same accuracy if the math is the same), annlab's default,
    annlab with Keras' `fit` in place of its own loop, and annlab with XLA. Run `r` of every
    side trains from seed SEED + r: each seed is compared side by side, and the accuracy's
    median is over seeds rather than over copies of one seed's."""
    from annlab.train.speed import Speed

    data = tmp / "mnist_like.npz"
    synthetic_mnist(data, n_train, n_test)
    threads = Speed.from_env().intra_op_threads  # what the annlab sides will use
    tutorial, annlab = [str(HERE / "tutorial_mlp.py"), str(data)], [__file__, "annlab-mlp", str(data)]
    sides = {
        "tutorial": (tutorial, {}),
        "tutorial_annlab_threads": (tutorial, {"TUTORIAL_INTRA_OP_THREADS": str(threads)}),
        "annlab": (annlab, {}),
        "annlab_keras_fit": (annlab, {"ANNLAB_OWN_LOOP": "0"}),
        "annlab_xla": (annlab, {"ANNLAB_JIT_COMPILE": "1"}),
    }
    seeds = [SEED + r for r in range(repeats)]
    results: dict[str, dict[str, list[float]]] = {k: {"epoch": [], "accuracy": []} for k in sides}
    for seed in seeds:  # interleaved, so that a slow minute of the machine hits every side
        for side, (args, env) in sides.items():
            out = _python(*args, str(epochs), str(seed), env={"PYTHONPATH": str(ROOT / "src"), **env})
            timed = out["seconds_per_epoch"][1:] or out["seconds_per_epoch"]
            results[side]["epoch"].append(statistics.median(timed))
            results[side]["accuracy"].append(out["test_accuracy"])
    return {
        "epochs": epochs,
        "seeds": seeds,
        "annlab_threads": threads,
        "cores": os.cpu_count(),
        "n_train": n_train,
        "n_test": n_test,
        **{
            side: {"epoch": stats(r["epoch"]), "accuracy": stats(r["accuracy"]), "by_seed": r["accuracy"]}
            for side, r in results.items()
        },
    }


def _clone(tmp: Path, overrides: dict[str, Any]) -> Path:
    """A copy of the working tree (what git would commit; no outputs), made a git repo of its
    own as a clone would be, sharing the project's .venv; params edited by `overrides`."""

    repo = tmp / "clone"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    (repo / ".venv").symlink_to(ROOT / ".venv")
    _set_params(repo, overrides)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for command in (["init", "--quiet"], ["add", "--all"], ["commit", "--quiet", "-m", "bench"]):
        subprocess.run([*git, *command], cwd=repo, check=True)
    return repo


def _make_repro(repo: Path, env: dict[str, str], jobs: int) -> float:
    """Wall seconds of what `make repro JOBS=<jobs>` runs (make itself would check the .venv)."""
    started = time.perf_counter()
    _timed(
        [sys.executable, "-m", "annlab.stages.validate", "--params", "params.yaml", "--params-only"],
        repo,
        env,
    )
    _timed([sys.executable, "-m", "annlab.run.repro", "--jobs", str(jobs)], repo, env)
    return time.perf_counter() - started


def _fresh(repo: Path) -> None:
    """No outputs, no DVC cache (so no run cache), no MLflow store: a first `make repro`."""
    for name in ("models", ".dvc/cache", ".dvc/tmp", "mlflow.db", "mlflow.db.lock", "mlartifacts"):
        path = repo / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    # data/ and reports/ hold files git tracks (data/own/, the default data.path, is a DVC
    # dependency): back to the commit, every output gone.
    for tracked in ("data", "reports"):
        subprocess.run(["git", "checkout", "--quiet", "--", tracked], cwd=repo, check=True)
        subprocess.run(["git", "clean", "--quiet", "-fdx", "--", tracked], cwd=repo, check=True)


def _chain_repo(tmp: Path, env: dict[str, str], n_stages: int) -> Path:
    """A DVC repository of `n_stages` stages in a chain, each one file in and one file out,
    reproduced once. With one stage, what a no-op `dvc repro` costs before any pipeline (DVC's
    floor); with as many stages as annlab's, what DVC's work per stage costs before any of
    annlab's dependencies, params and folders."""
    repo = tmp / f"chain-{n_stages}"
    repo.mkdir()
    (repo / "in-0.txt").write_text("annlab\n")
    stages = "".join(
        f"  copy-{i}:\n    cmd: cp in-{i}.txt in-{i + 1}.txt\n"
        f"    deps: [in-{i}.txt]\n    outs: [in-{i + 1}.txt]\n"
        for i in range(n_stages)
    )
    (repo / "dvc.yaml").write_text(f"stages:\n{stages}")
    for command in (
        ["git", "init", "--quiet"],  # nothing is committed, so no identity is needed
        ["dvc", "init", "--quiet"],
        ["dvc", "config", "core.analytics", "false"],  # as annlab's .dvc/config has it
        ["dvc", "repro", "--quiet"],
    ):
        _timed(command, repo, env)
    return repo


def _lock_load(repo: Path) -> dict[str, int]:
    """What a no-op `dvc repro` checks, read from dvc.lock: the stages, their dependencies and
    outputs, the folders among those and the files DVC looks up in them (a folder counted once
    for each stage that names it, as DVC walks it for each), the stages with params."""
    import yaml

    stages = yaml.safe_load((repo / "dvc.lock").read_text())["stages"].values()
    paths = [entry for stage in stages for entry in (*stage.get("deps", ()), *stage.get("outs", ()))]
    return {
        "stages": len(stages),
        "paths": len(paths),
        "folders": sum(1 for entry in paths if "nfiles" in entry),
        "file_lookups": sum(entry.get("nfiles", 0) for entry in paths),
        "stages_with_params": sum(1 for stage in stages if stage.get("params")),
        "lock_kib": round((repo / "dvc.lock").stat().st_size / 1024),
    }


def bench_pipeline(
    repeats: int, noop_repeats: int, overrides: dict[str, Any], tmp: Path, serial: bool
) -> dict[str, Any]:
    """The default pipeline from nothing vs the tutorial's script once per cell; no-op repro;
    peak RSS per stage; with `serial`, the five-seed grid on one warm worker (every run in one
    process, for its memory)."""
    import yaml

    # The grid as the tutorial runs it, one seed per cell at each optimizer's own learning rate
    # (params.yaml ships five seeds and tuning), then below the default: tuned, five seeds.
    untuned = {"grid.seeds": None, "tuning": None, "train.checkpoint": "last"}
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    tuned = {"tuning": shipped["tuning"], "train.checkpoint": shipped["train"]["checkpoint"]}
    repo = _clone(tmp, {**untuned, **overrides})
    grid = yaml.safe_load((repo / "params.yaml").read_text())["grid"]
    n_cells = len(grid["model"]) * len(grid["optimizer"]) * len(grid["activation"])
    env = {
        **os.environ,
        "PATH": f"{ROOT / '.venv/bin'}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": "src",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    stats_file = tmp / "stages.jsonl"
    jobs = os.cpu_count() or 1
    pipeline, tutorial = [], []
    for _ in range(repeats):
        _fresh(repo)
        stats_file.unlink(missing_ok=True)
        pipeline.append(_make_repro(repo, {**env, "ANNLAB_STAGE_STATS": str(stats_file)}, jobs))
        started = time.perf_counter()
        for _ in range(n_cells):
            _timed([sys.executable, str(HERE / "tutorial_digits.py")], repo, env)
        tutorial.append(time.perf_counter() - started)
    peaks: dict[str, float] = {}
    seconds: dict[str, list[float]] = {}
    for line in stats_file.read_text().splitlines():
        entry = json.loads(line)
        stage = entry["stage"].split("@")[0] if entry["stage"].startswith("train@") else entry["stage"]
        peaks[stage] = max(peaks.get(stage, 0.0), entry["peak_rss_mib"])
        seconds.setdefault(stage, []).append(entry["seconds"])
    noop_load = _lock_load(repo)
    n_stages = noop_load["stages"]
    floor_repo = _chain_repo(tmp, env, 1)
    chain_repo = _chain_repo(tmp, env, n_stages) if n_stages > 1 else floor_repo
    noop, floor, chain, make_noop = [], [], [], []
    for _ in range(noop_repeats):  # turn about, so that each is taken against the floor of its moment
        noop.append(_timed(["dvc", "repro"], repo, env))
        floor.append(_timed(["dvc", "repro"], floor_repo, env))
        chain.append(_timed(["dvc", "repro"], chain_repo, env))
        make_noop.append(_make_repro(repo, env, jobs))
    cells = _cell_stats(stats_file)
    # Five seeds per cell, from nothing, once: the affordable default the confidence report needs.
    seeds = [1, 2, 3, 4, 5]
    _fresh(repo)
    _set_params(repo, {"grid.seeds": seeds, **tuned})
    seeds_file = tmp / "seeds.jsonl"
    five_seeds = _make_repro(repo, {**env, "ANNLAB_STAGE_STATS": str(seeds_file)}, jobs)
    _set_params(repo, untuned)
    runs = _tuned_runs(shipped, n_cells, len(seeds))
    workers = _worker_memory(_cell_stats(seeds_file), len(seeds))
    # The default grid through a local Ray cluster of as many CPUs, from nothing, as often as
    # the local executor's (a fresh head each time: its workers would otherwise be warm).
    ray_seconds = []
    for _ in range(repeats):
        _fresh(repo)
        ray_seconds.append(_ray_repro(repo, env, jobs, tmp))
    on_ray = {"cpus": jobs, **stats(ray_seconds)}
    one_worker = None
    if serial:
        _fresh(repo)
        _set_params(repo, {"grid.seeds": seeds, **tuned})
        serial_file = tmp / "serial.jsonl"
        serial_seconds = _make_repro(repo, {**env, "ANNLAB_STAGE_STATS": str(serial_file)}, 1)
        _set_params(repo, untuned)
        memory = _worker_memory(_cell_stats(serial_file), len(seeds))
        one_worker = {"seeds": len(seeds), "seconds": serial_seconds, "workers": memory}
    return {
        "cells": n_cells,
        "tuned_runs": runs,
        "stages": n_stages,
        "jobs": jobs,
        "pipeline": stats(pipeline),
        "tutorial": stats(tutorial),
        "serial": one_worker,
        "noop": stats(noop),
        "noop_floor": stats(floor),
        "noop_chain": stats(chain),
        "noop_load": noop_load,
        "make_noop": stats(make_noop),
        "peak_rss_mib": peaks,
        "stage_seconds": {stage: statistics.median(v) for stage, v in seconds.items()},
        "overhead": stats([c["seconds"] - c["train_seconds"] for c in cells]),
        "cell_seconds": stats([c["seconds"] for c in cells]),
        "five_seeds": {"seeds": len(seeds), "seconds": five_seeds, "workers": workers},
        "ray": on_ray,
        "overrides": overrides,
    }


def _tuned_runs(params: dict[str, Any], n_cells: int, seeds: int) -> int:
    """Runs of the tuned grid: per cell, its optimizer's trials and the other seeds (T + S - 1)."""
    rates = (params.get("tuning") or {}).get("learning_rates") or {}
    per_optimizer = {o: len(rates.get(o) or []) for o in params["grid"]["optimizer"]}
    cells_per_optimizer = n_cells // max(len(per_optimizer), 1)
    return sum(cells_per_optimizer * (t + seeds - 1 if t else seeds) for t in per_optimizer.values())


def _set_params(repo: Path, overrides: dict[str, Any]) -> None:
    """Edit the clone's params.yaml in place (`a.b` keys)."""
    import yaml

    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = params
        for part in parents:
            node = node[part]
        node[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _cell_stats(path: Path) -> list[dict[str, Any]]:
    """The executor's line per trained cell (annlab.run.repro.record_stats), in the order they finished."""
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [line for line in lines if line["stage"].startswith("train@") and "worker" in line]


def _worker_memory(cells: list[dict[str, Any]], seeds: int) -> dict[str, Any]:
    """Peak RSS of the warm worker that trained the most runs: after its first cell and its last."""
    by_worker: dict[str, list[float]] = {}
    for cell in cells:
        by_worker.setdefault(cell["worker"], []).append(cell["peak_rss_mib"])
    if not by_worker:
        return {}
    rss = max(by_worker.values(), key=len)
    return {
        "workers": len(by_worker),
        "runs": len(rss) * seeds,
        "first_runs": seeds,
        "first_mib": rss[0],
        "last_mib": rss[-1],
        "growth": rss[-1] / rss[0] - 1,
        "max_mib": max(max(v) for v in by_worker.values()),
    }


def _ray_repro(repo: Path, env: dict[str, str], cpus: int, tmp: Path) -> float:
    """Seconds of `make repro` of the grid from nothing through a Ray head started here
    (loopback, `cpus` CPUs, no dashboard); the head's start is not counted."""
    port = _free_port()
    ray_env = {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # every Ray process on 127.0.0.1
    log = tmp / "ray-head.log"
    with log.open("w") as out:
        head = subprocess.Popen(
            [
                *(str(ROOT / ".venv/bin/ray"), "start", "--head", "--node-ip-address", "127.0.0.1"),
                *("--port", str(port), "--ray-client-server-port", str(_free_port())),
                *("--num-cpus", str(cpus), "--include-dashboard", "false"),
                *("--disable-usage-stats", "--block"),
            ],
            env=ray_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{log.read_text()}")
            time.sleep(0.2)
        seconds = _make_repro(repo, {**ray_env, "RAY_ADDRESS": f"127.0.0.1:{port}"}, cpus)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=10)  # Ray drains for up to 30 s; nothing is left to drain
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
    return seconds


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    from importlib import metadata

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(
            line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
        )
        memory = f"{int(mem.split()[1]) / 2**20:.1f} GiB"
    except (OSError, StopIteration):
        memory = "unknown"
    versions = ", ".join(
        f"{d} {metadata.version(d)}" for d in ("tensorflow-cpu", "keras", "mlflow", "dvc") if _has(d)
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": memory,
        "system": f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "libraries": versions,
        "commit": commit.stdout.strip() or "unknown",
        "gpu": "none used (TensorFlow CPU)",
    }


def _has(dist: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def _fmt(s: dict[str, float], digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def paired(training: dict[str, Any], side: str, against: str) -> list[float]:
    """Points of final test accuracy `side` ends above `against`, seed by seed."""
    a, b = training[side]["by_seed"], training[against]["by_seed"]
    return [100 * (x - y) for x, y in zip(a, b, strict=True)]


def training_target(training: dict[str, Any]) -> tuple[str, str]:
    """The training target's measured figures and verdict (docs/performance.md): annlab's
    speed-up over the tutorial as it is, and annlab's final accuracy identical to the
    tutorial's at annlab's intra-op thread count at every seed (the same math, summed in the
    same order). Beside them, annlab against the tutorial at its default thread count, and
    where the tutorial's own rounding at its default moved its result."""
    speedup = training["tutorial"]["epoch"]["median"] / training["annlab"]["epoch"]["median"]
    seeds = training["seeds"]

    def by_seed(diffs: list[float]) -> str:
        return ", ".join(f"{d:+.2f} at seed {seed}" for seed, d in zip(seeds, diffs, strict=True))

    same_threads = paired(training, "annlab", "tutorial_annlab_threads")
    measured = (
        f"{speedup:.2f}×; accuracy against the tutorial at annlab's thread count {by_seed(same_threads)},"
        f" at its default {by_seed(paired(training, 'annlab', 'tutorial'))} (points)"
    )
    differs = [seed for seed, d in zip(seeds, same_threads, strict=True) if d]
    detail = f"{speedup / 4:.0%} of 4×; annlab's accuracy "
    if differs:
        detail += f"does **not** equal the tutorial's at annlab's thread count at seed {_and(differs)}"
    else:
        detail += "equals the tutorial's at annlab's thread count at " + (
            "every seed" if len(seeds) > 1 else "this seed"
        )
    own = paired(training, "tutorial", "tutorial_annlab_threads")
    if moved := [(seed, d) for seed, d in zip(seeds, own, strict=True) if d]:
        detail += "; the tutorial's own rounding at its default thread count moves it " + _and(
            [f"{d:+.2f} points at seed {seed}" for seed, d in moved]
        )
    return measured, _verdict(speedup >= 4 and not differs, detail)


def _and(items: list[Any]) -> str:
    """'42', '42 and 43', '42, 43 and 44'."""
    words = [str(item) for item in items]
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


def _runs(n: int) -> str:
    return "1 run" if n == 1 else f"{n} runs"


def _verdict(ok: bool, detail: str) -> str:
    return ("met" if ok else "**missed**") + f": {detail}"


def markdown(result: dict[str, Any]) -> str:
    """reports/benchmarks.md."""
    m, t, p, ml = result["machine"], result["training"], result["pipeline"], result["mlflow"]
    tut, ann, xla, kfit = t["tutorial"], t["annlab"], t["annlab_xla"], t["annlab_keras_fit"]
    tut1 = t["tutorial_annlab_threads"]
    speedup = tut["epoch"]["median"] / ann["epoch"]["median"]
    speedup_xla = tut["epoch"]["median"] / xla["epoch"]["median"]
    training_measured, training_verdict = training_target(t)
    ratio = p["pipeline"]["median"] / p["tutorial"]["median"]
    noop, floor, make_noop = p["noop"]["median"], p["noop_floor"]["median"], p["make_noop"]["median"]
    worst_stage, worst_rss = max(p["peak_rss_mib"].items(), key=lambda kv: kv[1])
    five, ray = p["five_seeds"], p["ray"]
    # A warm worker's memory over the most runs: the one worker of the serial grid if it ran.
    mem = (p["serial"] or five)["workers"]
    five_ratio = five["seconds"] / p["tutorial"]["median"]
    ray_ratio = ray["median"] / p["pipeline"]["median"]
    overhead = p["overhead"]["median"]
    serial = []
    if p["serial"] is not None:
        one = p["serial"]
        serial = [
            f"| `make repro JOBS=1` with {one['seeds']} seeds per cell (one warm worker,"
            f" {p.get('tuned_runs', '?')} runs, tuned), one run | {one['seconds']:.1f}"
            f" | {one['seconds'] / p['tutorial']['median']:.2f}× |"
        ]
    per_run = statistics.median(ml["per_run"]) - statistics.median(ml["nothing"])
    lines = [
        "# Benchmarks: annlab beside the tutorial's plain Keras code",
        "",
        f"Written by `make bench`{' --smoke (tiny sizes: not figures to quote)' if result['smoke'] else ''}."
        " Medians, with (min–max), over "
        f"{_runs(t['tutorial']['epoch']['n'])} of each side, interleaved in one run of the benchmark.",
        "",
        "## Machine",
        "",
        *(f"- {k}: {v}" for k, v in m.items()),
        "",
        "## Targets",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
        "| training throughput ≥ 4× the tutorial's `fit`, results identical to the tutorial's at the"
        " same intra-op thread count"
        f" | {training_measured} | {training_verdict} |",
        f"| default grid from nothing ≤ 0.5× the tutorial's script once per cell | {ratio:.2f}×"
        f" | {_verdict(ratio <= 0.5, f'{ratio - 0.5:+.2f}× against 0.5×')} |",
        f"| the tuned default grid ({five['seeds']} seeds, {p.get('tuned_runs', '?')} runs) from nothing"
        " ≤ 1.5× the script once per cell"
        f" | {five_ratio:.2f}× | {_verdict(five_ratio <= 1.5, f'{five_ratio - 1.5:+.2f}× against 1.5×')} |",
        f"| per-cell overhead on a warm worker (cell wall time minus training) ≤ 1.0 s | {overhead:.2f} s"
        f" | {_verdict(overhead <= 1.0, f'{overhead - 1.0:+.2f} s against 1.0 s')} |",
        f"| default grid through a local {ray['cpus']}-CPU Ray cluster ≤ 1.3× the local executor"
        f" | {ray_ratio:.2f}× | {_verdict(ray_ratio <= 1.3, f'{ray_ratio - 1.3:+.2f}× against 1.3×')} |",
        f"| no-op `dvc repro` ≤ DVC's one-stage floor + 0.3 s | {noop:.2f} s (floor {floor:.2f} s)"
        f" | {_verdict(noop <= floor + 0.3, f'{noop - floor - 0.3:+.2f} s against floor + 0.3 s')} |",
        f"| no-op `make repro` ≤ the floor + 0.6 s | {make_noop:.2f} s"
        f" | {_verdict(make_noop <= floor + 0.6, f'{make_noop - floor - 0.6:+.2f} s against floor + 0.6')} |",
        f"| peak RSS of any process ≤ 1.5 GiB | {worst_rss:.0f} MiB ({worst_stage})"
        f" | {_verdict(worst_rss <= 1536, f'{1536 - worst_rss:.0f} MiB to spare')} |",
        *(
            [
                "| a warm worker's peak RSS ≤ 1.5 GiB, growing < 10 % over its runs"
                f" | {mem['last_mib']:.0f} MiB after {mem['runs']} runs,"
                f" {mem['growth']:+.1%} from run {mem['first_runs']}"
                f" | {_verdict(mem['last_mib'] <= 1536 and mem['growth'] < 0.10, 'see Whole pipeline')} |"
            ]
            if mem
            else []
        ),
        "",
        "## Training throughput",
        "",
        f"784-128-64-10 MLP, batch 32, Adam, {t['n_train']:,} training and {t['n_test']:,}"
        f" test images (MNIST-shaped, synthetic), {t['epochs']} epochs; seconds per epoch (validation"
        " included) are the median of epochs 2 onwards (the first traces the graph). "
        + (
            f"Each side's runs train from seeds {_and(t['seeds'])}, one each, so that every seed"
            " is compared side by side."
            if len(t["seeds"]) > 1
            else f"Each side trains from seed {t['seeds'][0]}."
        ),
        "",
        "| code | s / epoch | × tutorial | final test accuracy |",
        "|---|---|---|---|",
        f"| tutorial: plain `model.fit` | {_fmt(tut['epoch'])} | 1.00× | {_fmt(tut['accuracy'], 4)} |",
        f"| tutorial with annlab's intra-op thread count (`TUTORIAL_INTRA_OP_THREADS={t['annlab_threads']}`)"
        f" | {_fmt(tut1['epoch'])} | {tut['epoch']['median'] / tut1['epoch']['median']:.2f}×"
        f" | {_fmt(tut1['accuracy'], 4)} |",
        "| annlab (default: its own loop, a whole epoch per call, 1 intra-op thread, validation"
        f" batches of 1,024) | {_fmt(ann['epoch'])} | {speedup:.2f}×"
        f" | {_fmt(ann['accuracy'], 4)} |",
        f"| annlab with Keras' `fit` in place of its own loop (`ANNLAB_OWN_LOOP=0`) | {_fmt(kfit['epoch'])}"
        f" | {tut['epoch']['median'] / kfit['epoch']['median']:.2f}× | {_fmt(kfit['accuracy'], 4)} |",
        f"| annlab with XLA (`ANNLAB_JIT_COMPILE=1`, not bit-identical) | {_fmt(xla['epoch'])}"
        f" | {speedup_xla:.2f}× | {_fmt(xla['accuracy'], 4)} |",
        "",
        "Final test accuracy by seed:",
        "",
        "| code | " + " | ".join(f"seed {seed}" for seed in t["seeds"]) + " |",
        "|---|" + "---|" * len(t["seeds"]),
        *(
            f"| {label} | " + " | ".join(f"{a:.4f}" for a in t[side]["by_seed"]) + " |"
            for side, label in (
                ("tutorial", "tutorial"),
                ("tutorial_annlab_threads", "tutorial, annlab's thread count"),
                ("annlab", "annlab"),
                ("annlab_keras_fit", "annlab, Keras' `fit`"),
                ("annlab_xla", "annlab, XLA"),
            )
        ),
        "",
        "## Whole pipeline",
        "",
        f"`make repro` from a clone with no outputs, no DVC cache and an empty MLflow store"
        f" ({p['cells']} cells, {p['jobs']} at a time, everything logged to MLflow), against the"
        f" tutorial's digits script run {p['cells']} times, one after another.",
        "",
        "| what | seconds | × tutorial |",
        "|---|---|---|",
        f"| tutorial script × {p['cells']} | {_fmt(p['tutorial'], 1)} | 1.00× |",
        f"| `make repro` (cells side by side) | {_fmt(p['pipeline'], 1)} | {ratio:.2f}× |",
        f"| no-op `dvc repro` | {_fmt(p['noop'])} | |",
        f"| no-op `dvc repro` of a one-stage pipeline (DVC's floor, timed turn about with the lines"
        f" above and below, {p['noop_floor']['n']} times) | {_fmt(p['noop_floor'])} | |",
        f"| no-op `dvc repro` of a chain of {p['stages']} stages, one file in and one out each (timed"
        f" turn about too) | {_fmt(p['noop_chain'])} | |",
        f"| no-op `make repro` (params check, status, repro) | {_fmt(p['make_noop'])} | |",
        f"| `make repro` with {five['seeds']} seeds per cell, tuned ({p.get('tuned_runs', '?')} runs),"
        " one run"
        f" | {five['seconds']:.1f} | {five_ratio:.2f}× |",
        *serial,
        f"| `make repro` through a local Ray cluster ({ray['cpus']} CPUs; RAY_ADDRESS)"
        f" | {_fmt(ray, 1)} | {ray['median'] / p['tutorial']['median']:.2f}× |",
        "",
        f"On a warm worker a cell took {_fmt(p['cell_seconds'])} s of wall time (median over cells"
        f" and runs), of which all but {_fmt(p['overhead'])} s was training (the overhead: building"
        " the model, reading the data, logging to MLflow, saving the outputs).",
        *(
            [
                "",
                f"Warm workers' memory, {five['seeds']} seeds per cell: "
                + (
                    "the one worker of `make repro JOBS=1`"
                    if mem["workers"] == 1
                    else f"the busiest of {mem['workers']} workers"
                )
                + f" trained {mem['runs']} runs; its peak RSS was {mem['first_mib']:.0f} MiB after"
                f" its first {mem['first_runs']} and {mem['last_mib']:.0f} MiB after all"
                f" ({mem['growth']:+.1%}); the largest of any worker, {mem['max_mib']:.0f} MiB.",
            ]
            if mem
            else []
        ),
        "",
        "Per stage: peak resident memory (the largest over cells and runs) and the seconds its"
        " code ran after Python started (median over cells and runs; DVC's own work comes on top)."
        " Cells and the stages after the grid run on warm workers, so theirs are a worker's:"
        " memory includes TensorFlow and MLflow, loaded once for all of them.",
        "",
        "| stage | peak RSS (MiB) | seconds |",
        "|---|---|---|",
        *(
            f"| {stage} | {f'{mib:.0f}' if mib else 'not recorded'} | {p['stage_seconds'][stage]:.1f} |"
            for stage, mib in p["peak_rss_mib"].items()
        ),
        "",
        "## MLflow overhead",
        "",
        f"- importing MLflow: {ml['import']:.2f} s per process; opening the SQLite store:"
        f" {ml['open_store']:.2f} s",
        "- logging one run (params, 3 datasets, 20 epochs of curves, test metrics, 2 figures, the model"
        f" with its signature and given requirements): {_fmt(stats(ml['per_run']))} s, against"
        f" {_fmt(stats(ml['nothing']))} s for only saving the model: **{per_run:.2f} s per run**",
        "",
        "## Where the time goes",
        "",
        *where_the_time_goes(result),
        "",
    ]
    if p["overrides"]:
        lines.insert(4, f"Pipeline params changed for this run: `{p['overrides']}`.\n")
    return "\n".join(lines)


def where_the_time_goes(result: dict[str, Any]) -> list[str]:
    """What the measurements say about the time left, for the targets read against them."""
    t, p, ml, imports = result["training"], result["pipeline"], result["mlflow"], result["imports"]
    batches = -(-t["n_train"] // 32) + -(-t["n_test"] // 32)
    sides = ("tutorial", "annlab", "annlab_keras_fit", "annlab_xla")
    per_batch = {side: 1000 * t[side]["epoch"]["median"] / batches for side in sides}
    train_cell = p["stage_seconds"].get("train", float("nan"))
    # rounded as printed, so that the differences printed add up
    floor, chain, noop = (round(p[k]["median"], 2) for k in ("noop_floor", "noop_chain", "noop"))
    load = p["noop_load"]
    threads = t["annlab_threads"]
    xla = ", ".join(f"{d:+.2f}" for d in paired(t, "annlab_xla", "annlab"))
    moved = paired(t, "tutorial", "tutorial_annlab_threads")
    moved_at = [seed for seed, d in zip(t["seeds"], moved, strict=True) if d]
    same = not any(paired(t, "annlab", "tutorial_annlab_threads"))
    return [
        f"- **Training.** An epoch is {batches:,} batches of 32 (training and validation, which"
        f" annlab runs in batches of 1,024): the tutorial spends {per_batch['tutorial']:.2f} ms per"
        f" batch of 32, annlab {per_batch['annlab']:.2f} ms with its own loop and"
        f" {per_batch['annlab_keras_fit']:.2f} ms with Keras' `fit` (the same bits). The arithmetic"
        " of a training batch is about 21 MFLOP, a fraction of a millisecond on one core. What is"
        " left is TensorFlow running the train step's small ops one by one: Keras' forward pass,"
        " loss, gradients and metrics, and the optimizer's update, several ops per weight tensor."
        " XLA fuses them into a few kernels and gets to"
        f" {per_batch['annlab_xla']:.2f} ms, but it rounds differently: its final accuracy ends"
        f" {xla} points from annlab's without XLA, seed by seed, so it is offered, not the default.",
        "- **Rounding.** The tutorial leaves TensorFlow's threads inside an op at its default (one"
        f" per core it may use; this machine has {t['cores']}); annlab uses {threads}, which is"
        f" also faster for ops this small. Pinned to {threads}, the tutorial's own code runs at"
        f" {t['tutorial_annlab_threads']['epoch']['median']:.2f} s an epoch, and annlab's final"
        " accuracy "
        + ("equals" if same else "does **not** equal")
        + " its accuracy at "
        + ("every seed" if len(t["seeds"]) > 1 else "this seed")
        + ". At its default the tutorial ends "
        + (
            f"elsewhere at seed {_and(moved_at)} ({', '.join(f'{d:+.2f}' for d in moved if d)}"
            " points): there another thread count sums in another order on this CPU, and that"
            " rounding moves the seed's final accuracy by chance."
            if moved_at
            else "where it ends pinned."
        ),
        f"- **No-op `dvc repro`.** DVC alone takes {floor:.2f} s for a one-stage pipeline"
        " (starting Python, importing DVC, reading the repository, and exiting). A chain of"
        f" {p['stages']} stages of one file each takes {chain:.2f} s ({chain - floor:+.2f} s: DVC"
        " takes and releases its read and write locks around each stage, and builds the stages"
        f" twice). annlab's {p['stages']} stages take {noop:.2f} s ({noop - chain:+.2f} s) for what"
        f" they declare: {load['paths']} dependencies and outputs, {load['folders']} of them folders,"
        f" which DVC walks for each stage that names them, looking up each file in its state"
        f" database ({load['file_lookups']} lookups in all); the params of"
        f" {load['stages_with_params']} stages, for each of which DVC reads params.yaml again; and a"
        f" dvc.lock of {load['lock_kib']} KiB recording them, which DVC parses twice.",
        f"- **Pipeline.** A train cell took {train_cell:.1f} s on a warm worker (median), of which"
        f" {p['overhead']['median']:.2f} s was not training. Importing Keras/TensorFlow"
        f" ({imports['keras']:.1f} s), importing MLflow ({ml['import']:.1f} s) and opening the"
        f" SQLite store ({ml['open_store']:.1f} s) are paid once per worker, not per cell, while"
        " validate, fetch and preprocess run; evaluate, plot and report then run on a warm worker"
        " too, one after the other. DVC's own work (the stages before the grid, recording each"
        " cell and stage, the no-op checks) comes on top.",
    ]


def import_seconds(module: str, repeats: int) -> float:
    """Median seconds to import `module` in a fresh interpreter."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        runs.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> None:
    """Run every benchmark and write the report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks.md")
    p.add_argument("--repeats", type=int, default=3, help="runs of each side (default: %(default)s)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every part runs")
    args = p.parse_args(argv)
    if args.smoke:
        sizes = {"epochs": 2, "n_train": 2000, "n_test": 500}
        overrides = {
            "data.subset": 300,
            "train.epochs": 2,
            "grid.optimizer": ["adam"],
            "grid.activation": ["relu", "tanh"],
        }
        repeats, noop_repeats, runs = 1, 1, 1
    else:
        sizes = {"epochs": 4, "n_train": 60_000, "n_test": 10_000}
        overrides, repeats, noop_repeats, runs = {}, args.repeats, 15, 5
    with tempfile.TemporaryDirectory(prefix="annlab-bench-") as tmp_name:
        tmp = Path(tmp_name)
        print("bench: training throughput", flush=True)
        training = bench_training(repeats, tmp=tmp, **sizes)
        print("bench: whole pipeline", flush=True)
        pipeline = bench_pipeline(repeats, noop_repeats, overrides, tmp, serial=not args.smoke)
        print("bench: MLflow overhead", flush=True)
        mlflow = _python(__file__, "mlflow-overhead", str(runs), env={"PYTHONPATH": str(ROOT / "src")})
    result = {
        "imports": {"keras": import_seconds("keras", repeats)},
        "machine": machine(),
        "training": training,
        "pipeline": pipeline,
        "mlflow": mlflow,
        "smoke": args.smoke,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(result), encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"bench: -> {args.out}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["annlab-mlp"]:
        annlab_mlp(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1:2] == ["mlflow-overhead"]:
        mlflow_overhead(int(sys.argv[2]))
    else:
        main()
