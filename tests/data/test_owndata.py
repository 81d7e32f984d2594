"""Data tests: the user's own tables, image folders and arrays, read, transformed and refused.

The tables are scikit-learn's bundled iris, wine and breast-cancer sets written as CSV and
Parquet, with missing values injected and a string categorical column added.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from annlab.data import features, owndata
from annlab.errors import DataError
from annlab.params import Params, parse_params
from conftest import REPO

LOADERS = ("iris", "wine", "breast_cancer")


def real_table(name: str, seed: int = 0) -> pd.DataFrame:
    """A bundled scikit-learn dataset as a table: string class names in `species`, 5 % of each
    feature missing, and a string column `site` (with missing values) that carries no signal."""
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    frame = bunch.data.copy()
    rng = np.random.default_rng(seed)
    for column in frame.columns:
        frame.loc[rng.random(len(frame)) < 0.05, column] = np.nan
    frame["site"] = rng.choice(np.array(["north", "south", "east", None], dtype=object), size=len(frame))
    frame["species"] = np.asarray(bunch.target_names)[bunch.target]
    return frame


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def table_params(path: Path, **data: object) -> Params:
    kind = "csv" if path.suffix == ".csv" else "parquet"
    return parse_params({"data": {"dataset": kind, "path": str(path), "target": "species", **data}})


def refusal(params: Params) -> str:
    """The one message the data gets refused with."""
    with pytest.raises(DataError) as err:
        data = owndata.read(params.data)
        owndata.check(data, params, params.data.path)
    return str(err.value)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("name", LOADERS)
def test_real_tables_are_read_with_their_class_names_and_missing_values(
    name: str, suffix: str, tmp_path: Path
) -> None:
    frame = real_table(name)
    params = table_params(write(frame, tmp_path / f"{name}{suffix}"))
    data = owndata.read(params.data)
    owndata.check(data, params, params.data.path)
    assert data.kind == "table"
    assert data.class_names == sorted(set(frame["species"]))
    np.testing.assert_array_equal(np.asarray(data.class_names)[data.labels], frame["species"].to_numpy())
    assert data.categorical == ["site"]
    assert data.numeric == [c for c in frame.columns if c not in ("site", "species")]
    numbers = data.x[data.numeric].to_numpy(dtype=np.float64, na_value=np.nan)
    np.testing.assert_array_equal(numbers, frame[data.numeric].to_numpy(dtype=np.float64))  # NaN kept
    assert data.x["site"].isna().sum() == frame["site"].isna().sum()


@pytest.mark.parametrize("name", LOADERS)
def test_table_transform_matches_scikit_learn_fitted_on_the_training_rows(name: str) -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = real_table(name).drop(columns="species")
    numeric = [c for c in frame.columns if c != "site"]
    frame["site"] = frame["site"].astype("string")
    train, test = frame.iloc[::2].reset_index(drop=True), frame.iloc[1::2].reset_index(drop=True)
    test.loc[0, "site"] = "west"  # a category training never saw

    state = features.fit_table(train, numeric, ["site"], "standard")
    reference = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent", missing_values=pd.NA),
                    OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                ),
                ["site"],
            ),
        ]
    ).fit(train.astype({"site": object}))
    for rows in (train, test):
        expected = reference.transform(rows.astype({"site": object}))
        np.testing.assert_allclose(features.transform(state, rows), expected, rtol=1e-5, atol=1e-5)
    assert features.transform(state, test)[0, len(numeric) :].tolist() == [0, 0, 0]  # unseen: zeros
    assert state["features"][-3:] == ["site=east", "site=north", "site=south"]


def test_listed_categorical_columns_and_integer_labels(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"grade": [1, 2, 3] * 10, "size": np.arange(30.0), "species": [10, 2, 2] * 10}  # ints as classes
    )
    data = owndata.read(table_params(write(frame, tmp_path / "t.parquet"), categorical=["grade"]).data)
    assert data.categorical == ["grade"] and data.numeric == ["size"]
    assert data.class_names == ["2", "10"]  # numeric order, as written
    state = features.fit_table(data.x, data.numeric, data.categorical, "none")
    assert state["categorical"][0]["categories"] == ["1", "2", "3"]


def digits_folder(root: Path, *, rgb: bool = False, per_class: int = 12) -> np.ndarray:
    """PNGs of scikit-learn's digits, one subfolder per class (names `zero` ... `nine`); the
    images written, in the order annlab reads them (class folders sorted, files sorted)."""
    from sklearn.datasets import load_digits

    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    bunch = load_digits()
    written = {}
    for digit, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True)
        images = (bunch.images[bunch.target == digit][:per_class] * 255 / 16).astype(np.uint8)
        for i, pixels in enumerate(images):
            image = np.stack([pixels, 255 - pixels, pixels // 2], axis=-1) if rgb else pixels
            Image.fromarray(image).save(folder / f"{i:03d}.png")
            written.setdefault(name, []).append(image)
    return np.concatenate([np.stack(written[n]) for n in sorted(names)])


@pytest.mark.parametrize("rgb", [False, True])
def test_image_folders_read_pixels_exactly_with_folder_names_as_classes(rgb: bool, tmp_path: Path) -> None:
    expected = digits_folder(tmp_path / "digits", rgb=rgb)
    color = "rgb" if rgb else "grayscale"
    params = parse_params({"data": {"dataset": "images", "path": str(tmp_path / "digits"), "color": color}})
    data = owndata.read(params.data)
    assert data.kind == "images" and data.x.dtype == np.uint8
    assert data.x.shape == ((120, 8, 8, 3) if rgb else (120, 8, 8))
    np.testing.assert_array_equal(data.x, expected)
    assert data.class_names == sorted(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    )
    assert np.bincount(data.labels).tolist() == [12] * 10


def test_hidden_files_and_what_an_os_leaves_in_image_folders_are_not_samples(tmp_path: Path) -> None:
    expected = digits_folder(tmp_path / "digits", per_class=3)
    junk = ["two/Thumbs.db", "two/sub/desktop.ini", "five/.DS_Store", ".cache/x.png"]
    junk.append("__MACOSX/two/._000.png")  # what macOS adds to a zip
    for rel in junk:
        (tmp_path / "digits" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "digits" / rel).write_bytes(b"no image")
    params = parse_params({"data": {"dataset": "images", "path": str(tmp_path / "digits")}})
    data = owndata.read(params.data)
    assert len(data.class_names) == 10 and "__MACOSX" not in data.class_names
    np.testing.assert_array_equal(data.x, expected)
    (tmp_path / "digits" / "two" / "Thumbs.txt").write_bytes(b"no image")  # not the OS's: refused
    assert "Thumbs.txt: not an image" in refusal(params)


def test_image_size_resizes_images_of_any_size(tmp_path: Path) -> None:
    for name, size in (("a", (10, 6)), ("b", (7, 9)), ("b", (12, 12)), ("a", (5, 5))):
        folder = tmp_path / "imgs" / name
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (200, 10, 10)).save(folder / f"{size[0]}x{size[1]}.jpg")
    base = {"dataset": "images", "path": str(tmp_path / "imgs")}
    data = owndata.read(parse_params({"data": {**base, "image_size": [4, 5], "color": "rgb"}}).data)
    assert data.x.shape == (4, 4, 5, 3)
    assert "data.image_size" in refusal(parse_params({"data": base}))


def test_npz_images_and_features(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.array(["cat", "dog", "emu"] * 20)
    np.savez(tmp_path / "img.npz", x=rng.random((60, 6, 5, 2)), y=y)
    np.savez(tmp_path / "tab.npz", x=rng.random((60, 7)), y=np.repeat([0.0, 1.0, 2.0], 20))
    images = owndata.read(parse_params({"data": {"dataset": "npz", "path": str(tmp_path / "img.npz")}}).data)
    assert images.kind == "images" and images.x.shape == (60, 6, 5, 2)
    assert images.class_names == ["cat", "dog", "emu"]
    table = owndata.read(parse_params({"data": {"dataset": "npz", "path": str(tmp_path / "tab.npz")}}).data)
    assert table.kind == "features" and table.class_names == ["0", "1", "2"]
    cnn = parse_params(
        {"data": {"dataset": "npz", "path": str(tmp_path / "tab.npz")}, "grid": {"model": ["cnn"]}}
    )
    assert "not images" in refusal(cnn) and "use [ann]" in refusal(cnn)


# --- one test per kind of bad data: the message names the place, what was found, what is allowed


@pytest.fixture
def iris_csv(tmp_path: Path) -> Path:
    return write(real_table("iris"), tmp_path / "iris.csv")


def test_a_missing_empty_or_unreadable_file(tmp_path: Path) -> None:
    assert "no such file (data.path)" in refusal(table_params(tmp_path / "nope.csv"))
    (tmp_path / "empty.csv").write_text("")
    assert "empty.csv: the file is empty" in refusal(table_params(tmp_path / "empty.csv"))
    (tmp_path / "header.csv").write_text("a,species\n")
    assert "header.csv: holds no rows" in refusal(table_params(tmp_path / "header.csv"))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    assert "junk.parquet: not a Parquet file" in refusal(table_params(tmp_path / "junk.parquet"))
    (tmp_path / "latin.csv").write_bytes("a,species\n1,caf\xe9\n".encode("latin-1"))
    assert "not UTF-8" in refusal(table_params(tmp_path / "latin.csv"))
    (tmp_path / "ragged.csv").write_text("a,species\n1,x\n2,y,3,4\n")
    assert "ragged.csv: not a well-formed CSV file" in refusal(table_params(tmp_path / "ragged.csv"))


def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path: Path) -> None:
    rows = "".join(f"{i},{i * 2},{'ab'[i % 2]}\n" for i in range(12))
    (tmp_path / "dup.csv").write_text("x,x,species\n" + rows)
    message = refusal(table_params(tmp_path / "dup.csv"))
    assert "dup.csv: the header names column 'x' 2 times (columns 1, 2)" in message
    (tmp_path / "ok.csv").write_text("x,x.1,species\n" + rows)  # what pandas would have renamed it to
    assert owndata.read(table_params(tmp_path / "ok.csv").data).numeric == ["x", "x.1"]


def test_a_target_that_is_not_a_column_lists_the_columns(iris_csv: Path) -> None:
    message = refusal(table_params(iris_csv, target="specie"))
    assert "data.target names 'specie', which is not a column; did you mean 'species'?" in message
    assert "'sepal length (cm)'" in message and "'site'" in message


def test_missing_target_values_name_their_lines(tmp_path: Path) -> None:
    frame = real_table("iris")
    frame.loc[[3, 40], "species"] = None
    message = refusal(table_params(write(frame, tmp_path / "t.csv")))
    assert "target column 'species' has 2 missing values (line 5, line 42)" in message


def test_a_class_too_small_to_stratify_is_named_with_its_count(tmp_path: Path) -> None:
    frame = real_table("iris")
    frame.loc[[0, 1], "species"] = "rare"
    message = refusal(table_params(write(frame, tmp_path / "t.csv")))
    assert "class 'rare' has 2" in message and "at least 3" in message
    frame.loc[:, "species"] = "one"
    assert "only class 'one'" in refusal(table_params(write(frame, tmp_path / "one.csv")))


def test_text_in_a_numeric_column_names_the_line_and_value(tmp_path: Path) -> None:
    frame = real_table("iris").astype({"petal width (cm)": object})
    frame.loc[57, "petal width (cm)"] = "unknown"
    path = write(frame, tmp_path / "t.csv")
    message = refusal(table_params(path))
    assert "column 'petal width (cm)' holds numbers, but line 59 has 'unknown'" in message
    assert "data.categorical" in message
    # Listed as categorical, the same column is accepted as categories.
    data = owndata.read(table_params(path, categorical=["site", "petal width (cm)"]).data)
    assert "petal width (cm)" in data.categorical


def test_text_in_a_column_not_listed_as_categorical(iris_csv: Path) -> None:
    message = refusal(table_params(iris_csv, categorical=[]))
    assert "column 'site' is not in data.categorical, so it must hold numbers, but line" in message


def test_an_entirely_empty_column(tmp_path: Path) -> None:
    frame = real_table("iris")
    frame["notes"] = None
    message = refusal(table_params(write(frame, tmp_path / "t.csv")))
    assert "column 'notes' is entirely empty; leave it out with data.drop: [notes]" in message


def test_a_categorical_column_with_too_many_values_suggests_drop(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": [f"row-{i}" for i in range(1200)], "x": np.arange(1200.0)})
    frame["species"] = np.array(["a", "b", "c"])[np.arange(1200) % 3]
    path = write(frame, tmp_path / "t.parquet")
    message = refusal(table_params(path))
    assert "column 'id' has 1200 distinct values" in message and "data.drop: [id]" in message
    assert owndata.read(table_params(path, drop=["id"]).data).numeric == ["x"]


def test_drop_or_categorical_entries_that_are_not_columns(iris_csv: Path) -> None:
    message = refusal(table_params(iris_csv, drop=["sites"]))
    assert "data.drop names 'sites', which is not a column; did you mean 'site'?" in message
    message = refusal(table_params(iris_csv, categorical=["Site"]))
    assert "data.categorical names 'Site'" in message and "did you mean 'site'?" in message


def test_a_folder_without_class_subfolders(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "flat" / "a.png")
    params = parse_params({"data": {"dataset": "images", "path": str(tmp_path / "flat")}})
    assert "flat: no class subfolders" in refusal(params)
    missing = parse_params({"data": {"dataset": "images", "path": str(tmp_path / "none")}})
    assert "no such folder" in refusal(missing)


def test_a_file_that_is_not_an_image_or_cannot_be_decoded(tmp_path: Path) -> None:
    digits_folder(tmp_path / "d", per_class=3)
    params = parse_params({"data": {"dataset": "images", "path": str(tmp_path / "d")}})
    (tmp_path / "d" / "two" / "notes.txt").write_text("not an image")
    assert f"{tmp_path / 'd' / 'two' / 'notes.txt'}: not an image" in refusal(params)
    (tmp_path / "d" / "two" / "notes.txt").unlink()
    good = (tmp_path / "d" / "six" / "000.png").read_bytes()
    (tmp_path / "d" / "six" / "000.png").write_bytes(good[: len(good) // 2])  # truncated
    assert f"{tmp_path / 'd' / 'six' / '000.png'}: cannot be decoded" in refusal(params)


def test_images_of_different_sizes_need_image_size(tmp_path: Path) -> None:
    digits_folder(tmp_path / "d", per_class=3)
    Image.new("L", (9, 8)).save(tmp_path / "d" / "one" / "big.png")
    message = refusal(parse_params({"data": {"dataset": "images", "path": str(tmp_path / "d")}}))
    assert "big.png: 8x9 pixels (height x width), but" in message and "data.image_size" in message


def test_an_npz_without_x_or_y_or_with_lengths_that_differ(tmp_path: Path) -> None:
    def npz(name: str, **arrays: np.ndarray) -> Params:
        np.savez(tmp_path / name, **arrays)
        return parse_params({"data": {"dataset": "npz", "path": str(tmp_path / name)}})

    assert "no array 'y'" in refusal(npz("a.npz", x=np.zeros((30, 4)), labels=np.zeros(30)))
    assert "found: 'x', 'labels'" in refusal(npz("a.npz", x=np.zeros((30, 4)), labels=np.zeros(30)))
    assert "x has 30 samples but y has 29" in refusal(npz("b.npz", x=np.zeros((30, 4)), y=np.zeros(29)))
    x = np.zeros((30, 4))
    x[7, 2] = np.nan
    assert "x[7] holds NaN" in refusal(npz("c.npz", x=x, y=np.arange(30) % 3))
    assert "pickled Python objects" in refusal(npz("d.npz", x=np.zeros((30, 4)), y=np.array([{}] * 30)))
    onehot = np.eye(3)[np.arange(30) % 3]
    assert "it looks one-hot encoded: save the class numbers instead, y.argmax(axis=1)" in refusal(
        npz("e.npz", x=np.zeros((30, 4)), y=onehot)
    )
    assert "one-hot" not in refusal(npz("f.npz", x=np.zeros((30, 4)), y=onehot * 0.5))  # scores, not one-hot


def test_fractional_labels_are_refused_as_not_classes(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": np.arange(40.0), "species": np.linspace(0, 1, 40)})
    assert "fractional numbers" in refusal(table_params(write(frame, tmp_path / "t.csv")))


def test_validate_stage_refuses_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    frame = real_table("iris").astype({"petal width (cm)": object})
    frame.loc[10, "petal width (cm)"] = "n/a?"
    write(frame, tmp_path / "t.csv")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    params = tmp_path / "params.yaml"
    text = params.read_text().replace("dataset: digits ", "dataset: csv    ")
    text = text.replace("path: data/own ", "path: t.csv    ").replace("target: null ", "target: species ")
    params.write_text(text)
    argv = [sys.executable, "-m", "annlab.stages.validate", "--params", "params.yaml", "--stamp", "ok"]
    proc = subprocess.run(
        argv, cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(REPO / "src")}
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: t.csv: column 'petal width (cm)' holds numbers, but line 12")
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "ok").exists()


def test_make_repro_names_a_data_path_that_does_not_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from annlab.run import repro

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("data: {dataset: images, path: pictures}\n")
    assert repro.missing_data() == (
        "params.yaml: data.path: pictures does not exist; data.dataset images reads a folder with one"
        " subfolder per class"
    )
    (tmp_path / "pictures").mkdir()
    assert repro.missing_data() is None


def test_a_parquet_index_does_not_line_rows_up(tmp_path: Path) -> None:
    frame = real_table("iris")
    frame.index = range(100, 100 + len(frame))  # as after a filter or set_index
    frame.to_parquet(tmp_path / "t.parquet")  # the index is kept in the file
    data = owndata.read(table_params(tmp_path / "t.parquet").data)
    np.testing.assert_array_equal(
        data.x["sepal length (cm)"].to_numpy(), frame["sepal length (cm)"].to_numpy(dtype=np.float64)
    )


def test_one_number_written_as_two_classes_is_refused(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": np.arange(30.0), "species": ["1", "1.0", "2"] * 10})
    message = refusal(table_params(write(frame, tmp_path / "t.csv")))
    assert "writes one number as different classes ('1' and '1.0')" in message


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    for name in ("dark", "light"):
        (tmp_path / "d" / name).mkdir(parents=True)
        for i in range(3):
            value = 1000 * (i + 1) if name == "dark" else 60000
            Image.fromarray(np.full((4, 4), value, dtype=np.uint16)).save(tmp_path / "d" / name / f"{i}.png")
    data = owndata.read(parse_params({"data": {"dataset": "images", "path": str(tmp_path / "d")}}).data)
    assert sorted({int(v) for v in data.x[:, 0, 0]}) == [4, 8, 12, 233]  # value / 257, rounded


def test_npz_labels_as_bytes_or_whole_floats_are_class_names(tmp_path: Path) -> None:
    np.savez(tmp_path / "b.npz", x=np.zeros((30, 4)), y=np.array([b"cat", b"dog", b"emu"] * 10))
    assert owndata.read(
        parse_params({"data": {"dataset": "npz", "path": str(tmp_path / "b.npz")}}).data
    ).class_names == [
        "cat",
        "dog",
        "emu",
    ]
