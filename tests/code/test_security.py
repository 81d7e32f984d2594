"""Safe defaults: servers bind to loopback, nothing annlab loads can run code (Keras' safe mode,
no pickles). Secrets kept out of runs and logs are checked in test_tracking and test_faults."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from annlab import io
from annlab.errors import UserError
from conftest import REPO


@pytest.mark.parametrize("target", ["server", "ui"])
def test_servers_bind_to_loopback_unless_told_otherwise(target: str) -> None:
    def command(*args: str) -> str:
        env = {k: v for k, v in os.environ.items() if k != "HOST"}  # tcsh exports HOST: not a choice
        out = subprocess.run(
            ["make", "-n", target, *args], cwd=REPO, env=env, capture_output=True, text=True, check=True
        )
        lines = out.stdout.replace("\\\n", " ").splitlines()  # continued lines joined
        (line,) = [line for line in lines if line.startswith("mlflow ")]
        return line

    assert "--host 127.0.0.1" in command()
    if target == "server":
        assert "--host 0.0.0.0" in command("HOST=0.0.0.0")  # opening it up is an explicit choice


class _Payload:
    """Unpickling it would create a file: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_pickled_arrays_are_refused_without_running_them(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    np.save(tmp_path / "x_train.npy", np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match=r"x_train\.npy: holds pickled Python objects"):
        io.load_array(tmp_path, "x_train")
    assert not marker.exists()


def test_a_model_holding_code_is_refused_by_evaluate(tmp_path: Path) -> None:
    import keras

    from annlab.stages.evaluate import evaluate_cell

    marker = tmp_path / "code-ran"
    seed_dir = tmp_path / "ann-adam-relu" / "seed-42"
    seed_dir.mkdir(parents=True)
    # A layer whose function writes a file: code that loading the model must not run.
    touch = eval(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]")  # its source goes in the file
    layer = keras.layers.Lambda(touch)
    keras.Sequential([keras.Input((4,)), layer, keras.layers.Dense(3, activation="softmax")]).save(
        seed_dir / "model.keras"
    )
    marker.unlink()  # building the model ran it once
    meta = {"seed": 42, "diverged": False, "diverged_epoch": None, "epochs_run": 1}
    meta |= {"best_val_accuracy": 0.5, "best_epoch": 1, "loss": "categorical_crossentropy"}
    (seed_dir / "meta.json").write_text(json.dumps(meta))
    data = tmp_path / "data"
    io.save_arrays(data, {"x_test": np.zeros((6, 4), dtype=np.float32), "y_test": np.arange(6) % 3})
    with pytest.raises(UserError, match=r"model\.keras: refused: it holds Python code"):
        evaluate_cell(seed_dir.parent, data, ["a", "b", "c"])
    assert not marker.exists()
