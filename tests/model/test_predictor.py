"""Code tests: how a trained model takes raw inputs (`annlab.serve.served.Predictor`), and refuses
what does not fit with one message naming the schema."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from annlab.data import features
from annlab.params import Params
from annlab.serve.served import InputError, Predictor
from annlab.train.model import build_model


@pytest.fixture(scope="module")
def images() -> Predictor:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 17, size=(30, 8, 8)).astype(np.uint8)
    state = features.fit_array("standard", x)
    info = {"kind": "images", "input_shape": [8, 8], "input_dtype": "uint8", "class_names": ["a", "b", "c"]}
    return Predictor(build_model(Params().model, (8, 8), 3), state, info)


@pytest.fixture(scope="module")
def table() -> Predictor:
    frame = pd.DataFrame(
        {"size": [1.0, 2.0, np.nan, 4.0], "color": pd.array(["red", "blue", None, "red"], "string")}
    )
    state = features.fit_table(frame, ["size"], ["color"], "standard")
    info = {"kind": "table", "input_shape": None, "class_names": ["no", "yes"], "target": "label"}
    return Predictor(build_model(Params().model, (3,), 2), state, info)


def test_images_are_taken_as_the_dataset_has_them(images: Predictor) -> None:
    x = np.random.default_rng(1).integers(0, 17, size=(4, 8, 8)).astype(np.uint8)
    out = images.predict(x)
    assert list(out.columns) == ["predicted", "p(a)", "p(b)", "p(c)"] and len(out) == 4
    np.testing.assert_allclose(out.iloc[:, 1:].sum(axis=1), 1, atol=1e-6)
    np.testing.assert_array_equal(images.prepare(x[0]), images.prepare(x[:1]))  # one image
    np.testing.assert_array_equal(images.prepare(x[..., None]), images.prepare(x))  # a channel axis


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (
            np.zeros((3, 65)),
            "got an array of shape (3, 65); expected an array of shape (n, 8, 8) of pixel values, or"
            " flat rows (n, 64)",
        ),
        (np.zeros((3, 8, 7)), "got an array of shape (3, 8, 7)"),
        (np.array([["a"] * 8] * 8), "got values of type <U1"),
        (np.full((2, 8, 8), np.nan), "input 0 holds NaN or infinity"),
    ],
)
def test_images_that_do_not_fit_are_refused_naming_the_shape(
    images: Predictor, x: np.ndarray, message: str
) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        images.prepare(x)


def test_table_rows_take_original_columns_with_missing_values_and_new_categories(table: Predictor) -> None:
    rows = pd.DataFrame(
        {"color": ["red", None, "green"], "size": ["2.5", None, 1], "id": [7, 8, 9]}
    )  # extra id
    x = table.prepare(rows)
    expected = features.transform(
        table.preprocessing,
        pd.DataFrame({"size": [2.5, np.nan, 1.0], "color": pd.array(["red", None, "green"], "string")}),
    )
    np.testing.assert_array_equal(x, expected)
    assert x[2, 1:].tolist() == [0, 0]  # green: a category training never saw


def test_table_rows_that_do_not_fit_are_refused_naming_the_columns(table: Predictor) -> None:
    with pytest.raises(
        InputError,
        match=r"missing column 'size'; expected a table with the columns size \(number\), color \(text\)",
    ):
        table.prepare(pd.DataFrame({"color": ["red"]}))
    with pytest.raises(InputError, match=r"column 'size' takes numbers, but row 2 has 'big'"):
        table.prepare(pd.DataFrame({"size": [1, "big"], "color": ["red", "red"]}))
    with pytest.raises(InputError, match=r"expected a table"):
        table.prepare(np.zeros((2, 2)))


def test_labels_come_from_the_target_column_and_unknown_classes_are_named(table: Predictor) -> None:
    rows = pd.DataFrame({"size": [1.0, 2.0], "color": ["red", "red"], "label": ["yes", "no"]})
    assert table.labels(rows).tolist() == [1, 0]
    assert table.labels(rows.drop(columns="label")) is None
    with pytest.raises(InputError, match=r"'maybe' not among the model's classes \(no, yes\)"):
        table.labels(rows.assign(label=["yes", "maybe"]))


def test_rows_are_taken_by_position_and_infinity_is_refused(table: Predictor) -> None:
    rows = pd.DataFrame({"size": [1.0, 2.0, 3.0, 4.0], "color": ["red", "blue", "red", None]})
    np.testing.assert_array_equal(
        table.prepare(rows.iloc[[1, 3]]), table.prepare(rows.iloc[[1, 3]].reset_index(drop=True))
    )
    assert not np.isnan(table.prepare(rows.iloc[[1, 3]])).any()
    with pytest.raises(InputError, match=r"column 'size', row 2: inf; allowed: finite numbers"):
        table.prepare(rows.assign(size=[1.0, np.inf, 3.0, 4.0]))


def test_a_csv_to_predict_is_read_as_training_read_it(tmp_path: Path) -> None:
    from annlab.serve.served import read_inputs

    frame = pd.DataFrame(
        {"zip": pd.array(["01234", "02139", None, "01234"], "string"), "n": [1.0, 2.0, 3.0, 4.0]}
    )
    state = features.fit_table(frame, ["n"], ["zip"], "standard")
    info = {"kind": "table", "input_shape": None, "class_names": ["no", "yes"], "target": "label"}
    predictor = Predictor(build_model(Params().model, (3,), 2), state, info)
    (tmp_path / "rows.csv").write_text("zip,n,label\n01234,1,yes\n02139,2,\n")
    x, labels = read_inputs(tmp_path / "rows.csv", predictor)
    assert x["zip"].tolist() == ["01234", "02139"]  # text, as training read it, not 1234
    assert predictor.prepare(x)[:, 1:].tolist() == [[1, 0], [0, 1]]
    assert labels is not None and labels.tolist() == [1, -1]  # an empty label: predicted, not scored
