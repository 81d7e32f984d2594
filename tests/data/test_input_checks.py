"""Inputs the way users hold them, checked against the training data: flat pixel rows beside
images, and one warning when inputs look unlike what the model was trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from annlab.data import features
from annlab.serve import served


def digits_predictor() -> served.Predictor:
    """The digits model's reading of inputs (0-16 pixels), without its network."""
    images = load_digits().images
    dataset = {"kind": "images", "input_shape": [8, 8], "class_names": list("0123456789"), "image_size": None}
    return served.Predictor(None, features.fit_array("standard", images[:1000]), dataset)


def test_flat_rows_and_images_give_the_same_features() -> None:
    predictor, bunch = digits_predictor(), load_digits()
    images = predictor.prepare(bunch.images)
    np.testing.assert_array_equal(predictor.prepare(bunch.data), images)  # (1797, 64), as sklearn holds it
    np.testing.assert_array_equal(predictor.prepare(bunch.data[0]), images[:1])  # one flat row
    with pytest.raises(served.InputError, match=r"shape \(3, 63\); .* or flat rows \(n, 64\)"):
        predictor.prepare(np.zeros((3, 63)))


def test_a_csv_of_pixel_rows_with_or_without_a_header_and_label(tmp_path: Path) -> None:
    predictor, bunch = digits_predictor(), load_digits()
    np.savetxt(tmp_path / "bare.csv", bunch.data[:20], delimiter=",", fmt="%d")
    x, labels = served.read_inputs(tmp_path / "bare.csv", predictor)
    assert labels is None and np.array_equal(predictor.prepare(x), predictor.prepare(bunch.images[:20]))
    frame = pd.DataFrame(bunch.data[:20].astype(int), columns=[f"pixel{i}" for i in range(64)])
    frame.insert(0, "label", bunch.target[:20])
    frame.to_csv(tmp_path / "kaggle.csv", index=False)
    x, labels = served.read_inputs(tmp_path / "kaggle.csv", predictor)
    assert list(labels) == list(bunch.target[:20]) and np.array_equal(x, bunch.data[:20])
    frame = frame.astype(object)
    frame.loc[3, "pixel5"] = "dark"
    frame.to_csv(tmp_path / "odd.csv", index=False)
    with pytest.raises(served.InputError, match="row 4, column 6: 'dark' is not a number"):
        served.read_inputs(tmp_path / "odd.csv", predictor)


def test_pixels_as_trained_give_no_warning_and_scaled_ones_one() -> None:
    predictor, images = digits_predictor(), load_digits().images
    assert predictor.input_warnings(images[1000:]) == []
    (scaled,) = predictor.input_warnings(images[1000:] / 16.0)
    assert "pixels look scaled to 0-1; the model was trained on 0-16" in scaled
    (wide,) = predictor.input_warnings(images[1000:] * 255 / 16)
    assert "inputs 0-255" in wide and "pixels look like 0-255" in wide
    # A blank image is no evidence of scaling.
    assert predictor.input_warnings(np.zeros((2, 8, 8))) == []


def test_a_table_column_out_of_range_and_an_unseen_category_each_warn() -> None:
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"age": rng.uniform(20, 60, 200), "town": rng.choice(["a", "b"], 200)})
    state = features.fit_table(train, ["age"], ["town"], "standard")
    same = pd.DataFrame({"age": rng.uniform(20, 60, 200), "town": ["a"] * 200})
    assert features.input_warnings(state, same) == []
    far = same.assign(age=same["age"] * 10)
    (line,) = features.input_warnings(state, far)
    assert line.startswith("column 'age': ") and "outside the training range" in line
    new = same.assign(town=["a"] * 199 + ["zeta"])
    (line,) = features.input_warnings(state, new)
    assert "column 'town': 'zeta' never seen in training" in line
    # One value in 200 out of range is noise, not a warning.
    few = same.copy()
    few.loc[0, "age"] = 65.0
    assert features.input_warnings(state, few) == []


def test_a_model_saved_before_ranges_were_kept_gives_no_warning() -> None:
    predictor = digits_predictor()
    del predictor.preprocessing["range"]
    assert predictor.input_warnings(load_digits().images / 16.0) == []


def test_a_table_model_checks_its_inputs_through_the_predictor() -> None:
    rng = np.random.default_rng(1)
    train = pd.DataFrame({"age": rng.uniform(20, 60, 200), "town": rng.choice(["a", "b"], 200)})
    state = features.fit_table(train, ["age"], ["town"], "standard")
    dataset = {"kind": "table", "input_shape": None, "class_names": ["no", "yes"], "target": "y"}
    predictor = served.Predictor(None, state, dataset)
    assert predictor.input_warnings(train.head(50)) == []
    (line,) = predictor.input_warnings(train.head(50).assign(town="zeta"))
    assert "'zeta' never seen in training" in line
    assert predictor.input_warnings(train.head(0)) == []  # no rows: nothing to warn about


def test_a_constant_training_column_and_empty_inputs_give_no_false_warning() -> None:
    train = pd.DataFrame({"flag": [5.0] * 100, "age": np.linspace(20, 60, 100)})
    state = features.fit_table(train, ["flag", "age"], [], "none")
    assert features.input_warnings(state, train.head(30)) == []
    (line,) = features.input_warnings(state, train.head(30).assign(flag=50.0))
    assert line.startswith("column 'flag': ")
    assert digits_predictor().input_warnings(np.zeros((0, 64))) == []


def test_a_pixel_csv_written_by_pandas_keeps_its_header_out_of_the_rows(tmp_path: Path) -> None:
    predictor, bunch = digits_predictor(), load_digits()
    pd.DataFrame(bunch.data[:3]).to_csv(tmp_path / "pandas.csv", index=False)  # header 0,1,...,63
    x, _ = served.read_inputs(tmp_path / "pandas.csv", predictor)
    assert np.array_equal(x, bunch.data[:3])
    rows = bunch.data[:3].astype(object)
    rows[0, 0] = ""  # an empty first cell is a missing pixel, not a header
    pd.DataFrame(rows).to_csv(tmp_path / "gap.csv", index=False, header=False)
    with pytest.raises(served.InputError, match=r"row 1, column 1: '' is not a number"):
        served.read_inputs(tmp_path / "gap.csv", predictor)
