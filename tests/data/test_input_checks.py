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
