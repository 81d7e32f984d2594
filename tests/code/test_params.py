"""Code tests: params.yaml validation, one case per kind of bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from annlab.params import Params, ParamsError, load_params, parse_params
from conftest import REPO


def test_repo_params_are_valid_and_match_the_tutorial() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.data.dataset == "digits"
    assert params.model.hidden_units == [64, 32]
    assert (params.train.epochs, params.train.batch_size) == (20, 32)
    assert params.grid.optimizer == ["sgd", "adam", "rmsprop"]
    assert params.grid.activation == ["relu", "tanh", "sigmoid"]


@pytest.mark.parametrize(
    ("raw", "key", "allowed"),
    [
        ({"train": {"epoch": 3}}, "train.epoch", "did you mean 'epochs'"),  # misspelled
        ({"colour": "red"}, "colour", "allowed: data, grid"),  # unknown top-level key
        ({"train": {"epochs": "20"}}, "train.epochs", "valid integer"),  # wrong type
        ({"train": {"epochs": 2.5}}, "train.epochs", "valid integer"),
        ({"model": {"hidden_units": 64}}, "model.hidden_units", "valid list"),
        ({"train": {"epochs": 0}}, "train.epochs", "greater than or equal to 1"),  # out of range
        ({"train": {"batch_size": -4}}, "train.batch_size", "greater than or equal to 1"),
        ({"data": {"test_size": 1.5}}, "data.test_size", "less than 1"),
        ({"data": {"test_size": 0.5, "val_size": 0.45}}, "data", "at least 10 %"),
        ({"optimizers": {"sgd": {"learning_rate": 0}}}, "optimizers.sgd.learning_rate", "greater than 0"),
        ({"optimizers": {"adam": {"learning_rate": 5000}}}, "optimizers.adam.learning_rate", "less than"),
        ({"optimizers": {"sgd": {"momentum": 1.2}}}, "optimizers.sgd.momentum", "less than 1"),
        ({"train": {"optimizer": "adamw"}}, "train.optimizer", "'sgd', 'adam' or 'rmsprop'"),
        # the fair comparison's tuning
        ({"tuning": {"learning_rates": {"sgd": [0.1, 0]}}}, "tuning.learning_rates.sgd.1", "greater than 0"),
        ({"tuning": {"learning_rates": {"sgd": [-0.1]}}}, "tuning.learning_rates.sgd.0", "greater than 0"),
        ({"tuning": {"learning_rates": {"sgd": ["fast"]}}}, "tuning.learning_rates.sgd.0", "valid number"),
        ({"tuning": {"learning_rates": {"adamw": [0.1]}}}, "tuning.learning_rates.adamw", "'sgd', 'adam'"),
        ({"tuning": {"learning_rates": {"sgd": [0.1, 0.3, 0.1]}}}, "tuning.learning_rates", "0.1 more than"),
        ({"tuning": {"select_on": "test_accuracy"}}, "tuning.select_on", "'val_accuracy' or 'val_loss'"),
        ({"tuning": {"seed": 7}, "grid": {"seeds": [1, 2]}}, "tuning.seed", "not one of the training seeds"),
        ({"train": {"checkpoint": "middle"}}, "train.checkpoint", "'best' or 'last'"),
        ({"grid": {"optimizer": ["adam", "lion"]}}, "grid.optimizer.1", "'sgd', 'adam' or 'rmsprop'"),
        ({"model": {"activation": "swishy"}}, "model.activation", "'relu'"),
        ({"grid": {"activation": ["relu", "Relu"]}}, "grid.activation.1", "'relu'"),
        (
            {"data": {"dataset": "cifar10"}},
            "data.dataset",
            "'fashion_mnist', 'csv', 'parquet', 'npz' or 'images'",
        ),
        ({"data": {"dataset": "csv", "path": "a.csv"}}, "data", "needs the name of its label column"),
        ({"data": {"dataset": "csv", "target": "y", "drop": ["y"]}}, "data", "lists the target column 'y'"),
        ({"data": {"target": "y", "categorical": ["a", "a"]}}, "data", "'a' more than once"),
        ({"data": {"categorical": ["a"], "drop": ["a"]}}, "data", "both list 'a'"),
        ({"data": {"image_size": [0, 8]}}, "data.image_size.0", "greater than or equal to 1"),
        ({"data": {"image_size": [8]}}, "data.image_size", "at least 2 items"),
        ({"data": {"color": "rgba"}}, "data.color", "'grayscale' or 'rgb'"),
        ({"data": {"path": ""}}, "data.path", "at least 1 character"),
        (
            {"data": {"dataset": "parquet", "target": "y"}, "grid": {"model": ["ann", "cnn"]}},
            "grid.model",
            "cnn cannot train on a table",
        ),
        ({"data": {"scaler": "robust"}}, "data.scaler", "'standard', 'minmax' or 'none'"),
        ({"grid": {"optimizer": []}}, "grid.optimizer", "at least 1 item"),  # empty grid
        ({"grid": {"activation": ["relu", "relu"]}}, "grid.activation", "more than once"),
        ({"model": {"hidden_units": []}}, "model.hidden_units", "at least 1 item"),
        ({"model": {"type": "transformer"}}, "model.type", "'ann', 'cnn', 'rnn' or 'lstm'"),
        ({"grid": {"model": ["ann", "gru"]}}, "grid.model.1", "'ann', 'cnn', 'rnn' or 'lstm'"),
        ({"grid": {"model": ["cnn", "cnn"]}}, "grid.model", "more than once"),
        ({"model": {"cnn": {"filters": [0]}}}, "model.cnn.filters.0", "greater than or equal to 1"),
        ({"model": {"lstm": {"units": []}}}, "model.lstm.units", "at least 1 item"),
        ({"model": {"rnn": {"dropout": 1.0}}}, "model.rnn.dropout", "less than 1"),
        ({"model": {"cnn": {"kernal_size": 3}}}, "model.cnn.kernal_size", "did you mean 'kernel_size'"),
        ({"mlflow": {"experiment": ""}}, "mlflow.experiment", "at least 1 character"),
    ],
)
def test_bad_params_name_the_key_and_what_is_allowed(raw: dict, key: str, allowed: str) -> None:
    with pytest.raises(ParamsError) as err:
        parse_params(raw, "params.yaml")
    message = str(err.value)
    assert message.startswith("params.yaml")
    assert f"  {key}:" in message
    assert allowed in message


def test_every_error_is_reported_at_once() -> None:
    with pytest.raises(ParamsError) as err:
        parse_params({"train": {"epochs": 0, "optimizer": "x"}, "seed": -1})
    assert {"train.epochs:", "train.optimizer:", "seed:"} <= set(str(err.value).split())


@pytest.mark.parametrize(
    ("text", "expected"),
    [("train: [unclosed", "not valid YAML"), ("- just\n- a list\n", "must be a mapping")],
)
def test_unreadable_files_are_explained(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=expected):
        load_params(path)


def test_floats_are_read_as_yaml_1_2_does(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("optimizers:\n  sgd: {learning_rate: 1e-3}\n  adam: {epsilon: 1.0e-08}\n")
    params = load_params(path)
    assert params.optimizers.sgd.learning_rate == 0.001
    assert params.optimizers.adam.epsilon == 1e-8


def test_missing_file_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(tmp_path / "nope.yaml")


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)


def test_for_cell_overrides_only_model_optimizer_and_activation() -> None:
    base = Params()
    cell = base.for_cell("lstm", "sgd", "tanh")
    assert (cell.model.type, cell.train.optimizer, cell.model.activation) == ("lstm", "sgd", "tanh")
    single_run = {"train": {"optimizer"}, "model": {"type", "activation"}}
    assert cell.model_dump(exclude=single_run) == base.model_dump(exclude=single_run)


def test_cells_span_architectures_in_matrix_order() -> None:
    params = parse_params(
        {"grid": {"model": ["cnn", "ann"], "optimizer": ["adam"], "activation": ["relu", "tanh"]}}
    )
    assert [c.name for c in params.cells()] == [
        "cnn-adam-relu",
        "cnn-adam-tanh",
        "ann-adam-relu",
        "ann-adam-tanh",
    ]
    assert params.cells()[0] == ("cnn-adam-relu", "cnn", "adam", "relu")
    assert params.architectures() == {"cnn": "cnn 64-128 / 64-32", "ann": "ann 64-32"}
    assert params.models_label() == "cnn+ann"
    assert Params().models_label() == "ann 64-32"


def test_grid_id_ignores_single_run_defaults_and_what_the_grid_does_not_use() -> None:
    base = Params()
    assert parse_params({"model": {"type": "cnn", "activation": "tanh"}}).grid_id() == base.grid_id()
    assert parse_params({"grid": {"model": ["ann", "cnn"]}}).grid_id() != base.grid_id()
    # The LSTM's settings matter to a grid with an LSTM, not to the default [ann] one.
    lstm = {"model": {"lstm": {"units": [32]}}}
    assert parse_params(lstm).grid_id() == base.grid_id()
    with_lstm = {"grid": {"model": ["ann", "lstm"]}}
    assert parse_params({**lstm, **with_lstm}).grid_id() != parse_params(with_lstm).grid_id()
    adam_only = {"grid": {"optimizer": ["adam"]}}
    sgd = {"optimizers": {"sgd": {"learning_rate": 0.5}}}
    assert parse_params({**adam_only, **sgd}).grid_id() == parse_params(adam_only).grid_id()


def test_validate_stage_fails_fast_and_writes_nothing(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["epochs"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stamp = tmp_path / "params.ok"
    proc = subprocess.run(
        [sys.executable, "-m", "annlab.stages.validate", "--params", "params.yaml", "--stamp", str(stamp)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "train.epochs" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not stamp.exists()


def test_the_pipeline_needs_every_key_written_out(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    del params["grid"]["seeds"]
    del params["train"]["loss"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert load_params(path).seeds == [42]  # fine for one stage run by hand
    with pytest.raises(ParamsError) as err:
        load_params(path, complete=True)  # not for DVC, which tracks both keys
    assert "grid.seeds: missing; DVC tracks it, so write it out (default: null)" in str(err.value)
    assert 'train.loss: missing; DVC tracks it, so write it out (default: "categorical_crossentropy")' in str(
        err.value
    )
    # The shipped file is the schema's defaults, but for five training seeds and the fair
    # comparison (tuning, best checkpoints): the schema's None and "last" (the one top-level
    # seed, one run at each optimizer's rate) suit a stage run by hand on a partial file.
    shipped = load_params(REPO / "params.yaml", complete=True)
    assert shipped.grid.seeds == [1, 2, 3, 4, 5]
    assert shipped.tuning is not None and shipped.train.checkpoint == "best"
    untuned = {"grid": Params().grid, "tuning": None, "train": Params().train}
    assert shipped.model_copy(update=untuned) == Params()


def test_seeds_must_be_distinct_and_in_range() -> None:
    with pytest.raises(ParamsError, match=r"grid.seeds: lists 1 more than once"):
        parse_params({"grid": {"seeds": [1, 2, 1]}})
    with pytest.raises(ParamsError, match=r"grid.seeds.0: Input should be greater than or equal to 0"):
        parse_params({"grid": {"seeds": [-1]}})
    with pytest.raises(ParamsError, match=r"grid.seeds: List should have at least 1 item"):
        parse_params({"grid": {"seeds": []}})
