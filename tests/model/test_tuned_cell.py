"""Model tests: one cell trained with tuning by the train stage itself (no DVC): T trials on the
tuning seed, the choice on validation (not moved by the test labels), the tuning seed's trial
reused as its final run, T + S − 1 MLflow runs with their roles, and the best checkpoint's
weights kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from annlab import io, tuning
from annlab.stages import train
from conftest import processed_blobs

pytestmark = pytest.mark.slow

RATES = [0.003, 0.03, 0.3]
SEEDS = [1, 2, 3]
CELL = "ann-sgd-relu"


def _params(root: Path, **extra: object) -> Path:
    params = {
        "train": {"epochs": 4, "batch_size": 16, "checkpoint": "best"},
        "grid": {"optimizer": ["sgd"], "activation": ["relu"], "seeds": SEEDS},
        "tuning": {"learning_rates": {"sgd": RATES}, "select_on": "val_accuracy", "seed": None},
        "mlflow": {"experiment": "tuned"},
        **extra,
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _train(root: Path, params: Path, data: Path) -> None:
    train.main(
        [
            *("--params", str(params), "--model", "ann", "--optimizer", "sgd", "--activation", "relu"),
            *("--data", str(data), "--model-dir", str(root / "models" / CELL)),
            *("--history", str(root / "history" / CELL), "--tuning", str(root / "tuning" / CELL)),
        ]
    )


@pytest.fixture(scope="module")
def cell(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("tuned")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    processed_blobs(root / "data")
    _train(root, _params(root), root / "data")
    yield {"root": root}
    mp.undo()


def test_the_choice_is_the_argmax_of_the_trials_histories(cell: dict) -> None:
    folder = cell["root"] / "tuning" / CELL
    choice = json.loads((folder / "choice.json").read_text())
    judged = []
    for entry in choice["trials"]:
        h = pd.read_csv(folder / entry["file"], float_precision="round_trip")
        lists = {c: list(h[c]) for c in ("loss", "accuracy", "val_loss", "val_accuracy")}
        judged.append(tuning.Trial(entry["learning_rate"], tuning.checkpoint(lists, "best", "val_accuracy")))
    assert [t.learning_rate for t in judged] == RATES
    assert choice["learning_rate"] == tuning.choose(judged, "val_accuracy").learning_rate
    assert (choice["tuning_seed"], choice["select_on"], choice["checkpoint"]) == (1, "val_accuracy", "best")


def test_the_tuning_seeds_trial_is_its_final_run_and_the_others_train_at_the_choice(cell: dict) -> None:
    root = cell["root"]
    choice = json.loads((root / "tuning" / CELL / "choice.json").read_text())
    rate = choice["learning_rate"]
    assert sorted(p.name for p in (root / "models" / CELL).iterdir()) == ["seed-1", "seed-2", "seed-3"]
    trial_csv = root / "tuning" / CELL / train.trial_name(rate)
    assert (root / "history" / CELL / "seed-1.csv").read_bytes() == trial_csv.read_bytes()
    for seed in SEEDS:
        meta = io.read_json(root / "models" / CELL / f"seed-{seed}" / "meta.json")
        assert (meta["learning_rate"], meta["tuned"], meta["checkpoint"]) == (rate, True, "best")


def test_mlflow_holds_t_plus_s_minus_1_runs_with_their_roles(cell: dict) -> None:
    client = MlflowClient()
    (experiment,) = [e for e in client.search_experiments() if e.name == "tuned"]
    runs = [
        r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("annlab.cell") == CELL
    ]
    roles = sorted(r.data.tags["annlab.role"] for r in runs)
    assert roles == ["final"] * len(SEEDS) + ["trial"] * (len(RATES) - 1)
    rate = json.loads((cell["root"] / "tuning" / CELL / "choice.json").read_text())["learning_rate"]
    for run in runs:
        if run.data.tags["annlab.role"] == "final":
            assert float(run.data.tags["annlab.chosen_learning_rate"]) == rate
            assert float(run.data.params["learning_rate"]) == rate
            assert run.outputs.model_outputs, "a final run holds its model"
        else:
            assert float(run.data.params["learning_rate"]) in RATES
            assert not run.outputs.model_outputs


def test_the_test_labels_do_not_move_the_choice(
    cell: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    data = tmp_path / "data"
    shutil.copytree(cell["root"] / "data", data)
    y = io.load_array(data, "y_test")
    io.save_arrays(data, {"y_test": np.roll(y, 1)})  # every test label changed
    assert not np.array_equal(io.load_array(data, "y_test"), y)
    _train(tmp_path, _params(tmp_path), data)
    ours = json.loads((tmp_path / "tuning" / CELL / "choice.json").read_text())
    theirs = json.loads((cell["root"] / "tuning" / CELL / "choice.json").read_text())
    assert ours == theirs


def test_kept_weights_are_the_best_epochs() -> None:
    import keras

    from annlab.params import Params
    from annlab.report.metrics import one_hot
    from annlab.train import model as m

    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 8)).astype("float32")
    y = one_hot(np.arange(90) % 3, 3)
    xv = rng.normal(size=(30, 8)).astype("float32")
    yv = one_hot(np.arange(30) % 3, 3)
    params = Params.model_validate({"train": {"epochs": 8, "batch_size": 16}}).for_cell("ann", "sgd", "relu")
    params = params.with_learning_rate("sgd", 0.5)
    m.seed_everything(3)
    model = m.compiled_model(params, (8,), 3)
    seen: list[list[np.ndarray]] = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            seen.append(self.model.get_weights())

    history = m.fit(
        model, (x, y), (xv, yv), 8, 16, callbacks=[Record(), m.KeepBest("val_accuracy")], verbose=0
    )
    best = tuning.checkpoint(history, "best", "val_accuracy")
    assert best.epoch is not None
    kept = model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(kept, seen[best.epoch - 1], strict=True))
    if best.epoch != len(seen):  # the final epoch's weights differ from the kept ones
        assert not all(np.array_equal(a, b) for a, b in zip(kept, seen[-1], strict=True))
