"""Code tests: where runs are stored, how a cell's run is keyed and what it logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from annlab import tracking
from annlab.params import Params
from annlab.stages.train import cell_params


def test_default_store_is_at_the_dvc_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_relative_sqlite_uri_is_taken_from_the_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///store/mlflow.db")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'store/mlflow.db'}"


def test_other_uris_pass_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


def test_experiment_artifacts_live_next_to_the_database(mlflow_store: str) -> None:
    from mlflow.tracking import MlflowClient

    exp_id = tracking.experiment_id("demo")
    assert tracking.experiment_id("demo") == exp_id
    location = MlflowClient().get_experiment(exp_id).artifact_location
    db = Path(mlflow_store.removeprefix("sqlite:///"))
    assert location == (db.parent / "mlartifacts").as_uri()


def test_run_key_changes_with_every_input() -> None:
    params = cell_params(Params(), "adam", "relu")
    key = tracking.run_key("adam-relu", params, "digest")
    assert key == tracking.run_key("adam-relu", dict(params), "digest")
    assert key != tracking.run_key("adam-tanh", params, "digest")
    assert key != tracking.run_key("adam-relu", {**params, "train.epochs": 21}, "digest")
    assert key != tracking.run_key("adam-relu", params, "other data")


def test_cell_params_hold_the_cell_and_only_its_own_optimizer() -> None:
    logged = cell_params(Params(), "sgd", "tanh")
    assert (logged["optimizer"], logged["activation"]) == ("sgd", "tanh")
    assert (logged["train.optimizer"], logged["model.activation"]) == ("sgd", "tanh")
    assert logged["optimizers.sgd.learning_rate"] == 0.01
    assert not any(k.startswith(("optimizers.adam", "optimizers.rmsprop", "grid.")) for k in logged)


def test_start_replaces_runs_with_the_same_key() -> None:
    import mlflow

    exp_id = tracking.experiment_id("demo")
    for _ in range(2):
        with tracking.start_cell_run(exp_id, "k1", "adam-relu", {}):
            mlflow.log_metric("x", 1)
    with tracking.start_cell_run(exp_id, "k2", "adam-relu", {}):
        pass
    assert len(tracking.find_runs(exp_id, "k1")) == 1
    assert len(tracking.find_runs(exp_id, "k2")) == 1
    with tracking.resume_cell_run(exp_id, "k1", "adam-relu", {}):
        mlflow.log_metric("test_accuracy", 0.5)
    (run,) = tracking.find_runs(exp_id, "k1")
    assert run.data.metrics == {"x": 1, "test_accuracy": 0.5}
