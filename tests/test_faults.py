"""Faults: a training stage interrupted by SIGINT or SIGTERM writes no output, ends its MLflow
run as KILLED, and says how to go on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from annlab import io


def _blobs(directory: Path) -> None:
    """Three Gaussian blobs in 8 features (images of 2x4), as preprocess would save them."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, size=(3, 8))
    arrays = {}
    for split, n in (("train", 60), ("val", 30), ("test", 30)):
        y = np.arange(n) % 3
        arrays[f"x_{split}"] = (centers[y] + rng.normal(0, 1, size=(n, 8))).astype(np.float32)
        arrays[f"y_{split}"] = y.astype(np.int64)
    io.save_arrays(directory, arrays)
    info = {"dataset": "digits", "class_names": ["a", "b", "c"], "n_features": 8, "image_shape": [2, 4]}
    io.write_json(directory / "dataset.json", {**info, "sizes": {"test": 30}})


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_cell_writes_nothing_and_its_run_is_killed(
    tmp_path: Path, mlflow_store: str, signum: signal.Signals
) -> None:
    _blobs(tmp_path / "data")
    # Epochs enough to still be training when the signal comes (a few ms each).
    params = {
        "train": {"epochs": 10000, "batch_size": 16},
        "grid": {"optimizer": ["adam"], "activation": ["relu"]},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "models").mkdir()
    argv = [sys.executable, "-m", "annlab.stages.train", "--model", "ann", "--optimizer", "adam"]
    argv += ["--activation", "relu", "--data", "data", "--model-dir", "models/ann-adam-relu"]
    argv += ["--history", "history/ann-adam-relu"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    started = time.monotonic()
    for line in proc.stdout:  # Keras prints a line per epoch when not on a terminal
        if line.startswith("Epoch 3/"):
            break
        assert time.monotonic() - started < 120, "training never started"
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
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`annlab.role` = 'cell'")
    assert [r.info.status for r in runs] == ["KILLED"]
    # Its curves up to the interruption: epochs 1 and 2 at least had ended.
    assert len(client.get_metric_history(runs[0].info.run_id, "loss")) >= 2
