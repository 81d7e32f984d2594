"""A trained model in use: raw inputs in (table rows with their original columns, or pixels as
the dataset has them), class names and probabilities out.

Each model folder `models/<cell>/seed-<n>/` holds all it needs: `model.keras`, the
preprocessing fitted on its training split (`preprocessing.json`) and what its data is
(`dataset.json`). `Predictor` reads them; `annlab.serve.pyfunc` wraps it for MLflow, so a logged,
registered or served model takes the same raw inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from annlab import io
from annlab.data import features, owndata
from annlab.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

MODEL_FILE = "model.keras"
PREPROCESSING = "preprocessing.json"  # as preprocess wrote it for the model's split
DATASET = "dataset.json"  # as preprocess wrote it: kind, class names, input shape, target
RAW_TEST_TABLE = "test.parquet"  # preprocess keeps each split's test rows raw, labels included
RAW_TEST_ARRAYS = "test.npz"
SHOWN = 5


class InputError(UserError):
    """Inputs that do not fit the model: wrong columns, a wrong shape, text for a number."""


def in_use_seed(runs: Mapping[int, tuple[float | None, bool]]) -> int | None:
    """Which seed's model stands for a cell in use (the registry's version, `annlab predict
    --model <cell>`): among the seeds that did not diverge, the highest validation accuracy, the
    lowest seed on a tie; None when every seed diverged. Not the test accuracy, which would let
    the test set choose the model. `runs`: each seed's best validation accuracy and whether it
    diverged."""
    trained = {seed: val_accuracy for seed, (val_accuracy, diverged) in runs.items() if not diverged}
    return min(trained, key=lambda seed: (-(trained[seed] or 0.0), seed), default=None)


@dataclass
class Predictor:
    """A trained network with the preprocessing of its training split."""

    model: Any  # keras.Model
    preprocessing: dict[str, Any]
    dataset: dict[str, Any]

    @classmethod
    def load(cls, folder: str | Path, model: Any = None) -> Predictor:
        """The predictor a model folder holds (`models/<cell>/seed-<n>/`); `model`: its Keras
        model already in memory (None: read from the folder)."""
        folder = Path(folder)
        missing = [n for n in (MODEL_FILE, PREPROCESSING, DATASET) if not (folder / n).is_file()]
        if missing:
            raise UserError(
                f"{folder}: not a trained model folder (it lacks {', '.join(missing)}); a model "
                f"folder is models/<cell>/seed-<n>/ after `make repro`"
            )
        from annlab.train.model import load_model

        model = model if model is not None else load_model(folder / MODEL_FILE)
        return cls(model, io.read_json(folder / PREPROCESSING), io.read_json(folder / DATASET))

    @property
    def class_names(self) -> list[str]:
        return list(self.dataset["class_names"])

    @property
    def is_table(self) -> bool:
        return self.preprocessing["kind"] == "table"

    @property
    def columns(self) -> dict[str, list[str]]:
        """A table's input columns: numeric and categorical."""
        return {
            "numeric": list(self.preprocessing["numeric"]["columns"]),
            "categorical": [c["name"] for c in self.preprocessing["categorical"]],
        }

    @property
    def shape(self) -> tuple[int, ...]:
        """One raw sample's shape: (height, width[, channels]) or (features,)."""
        return tuple(self.dataset["input_shape"])

    def expected(self) -> str:
        """The inputs this model takes, in words."""
        if self.is_table:
            cols = [f"{c} (number)" for c in self.columns["numeric"]]
            cols += [f"{c} (text)" for c in self.columns["categorical"]]
            return f"a table with the columns {', '.join(cols)}; empty cells are allowed"
        if len(self.shape) == 1:
            return f"an array of shape (n, {self.shape[0]}) of numbers"
        flat = int(np.prod(self.shape))
        return (
            f"an array of shape (n, {', '.join(map(str, self.shape))}) of pixel values, or flat rows"
            f" (n, {flat}) with the pixels in row-major order"
        )

    def prepare(self, x: Any) -> np.ndarray:
        """Raw inputs as the network's float32 features; InputError naming the expected schema."""
        return features.transform(self.preprocessing, self._raw(x))

    def input_warnings(self, x: Any) -> list[str]:
        """Where raw inputs look unlike the training data (`features.input_warnings`: values far
        outside the training range, pixels scaled otherwise, unseen categories); [] for a model
        trained before annlab kept its ranges."""
        return self._warnings(self._raw(x))

    def probabilities(self, x: Any) -> np.ndarray:
        """Each input's class probabilities, columns in `class_names` order."""
        return self._probabilities(self._raw(x))

    def predict(self, x: Any) -> pd.DataFrame:
        """One row per input: the predicted class name, then each class's probability."""
        return self._named(self.probabilities(x))

    def predict_checked(self, x: Any) -> tuple[pd.DataFrame, list[str]]:
        """`predict` and `input_warnings` at once, the inputs read once (predict, the served model)."""
        raw = self._raw(x)
        return self._named(self._probabilities(raw)), self._warnings(raw)

    def _raw(self, x: Any) -> Any:
        """Inputs checked and in the training data's layout: a table's columns, or images."""
        return self._table(x) if self.is_table else self._array(x)

    def _warnings(self, raw: Any) -> list[str]:
        return features.input_warnings(
            self.preprocessing, raw, images=not self.is_table and len(self.shape) > 1
        )

    def _probabilities(self, raw: Any) -> np.ndarray:
        from annlab.train.model import probabilities

        # As evaluate predicts (the same call): the same inputs give the same bits.
        return probabilities(self.model, features.transform(self.preprocessing, raw))

    def _named(self, probs: np.ndarray) -> pd.DataFrame:
        import pandas as pd

        names = np.asarray(self.class_names, dtype=object)
        out = pd.DataFrame({"predicted": names[probs.argmax(axis=1)]})
        for i, name in enumerate(self.class_names):
            out[f"p({name})"] = probs[:, i].astype(np.float64)
        return out

    def _table(self, x: Any) -> pd.DataFrame:
        import pandas as pd

        if not isinstance(x, pd.DataFrame):
            raise InputError(f"expected {self.expected()}; got {type(x).__name__}")
        x = x.rename(columns=str).reset_index(drop=True)  # rows by position, as in training
        wanted = self.columns["numeric"] + self.columns["categorical"]
        if missing := [c for c in wanted if c not in x.columns]:
            raise InputError(
                f"missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing[:SHOWN]))}"
                f"{', …' if len(missing) > SHOWN else ''}; expected {self.expected()}"
            )
        table = {}
        for name in self.columns["numeric"]:
            column = x[name]
            numbers = pd.to_numeric(column, errors="coerce").astype("float64")
            bad = np.flatnonzero((numbers.isna() & column.notna()).to_numpy())
            if len(bad):
                raise InputError(
                    f"column {name!r} takes numbers, but row {bad[0] + 1} has {column.iloc[bad[0]]!r};"
                    f" expected {self.expected()}"
                )
            if len(infinite := np.flatnonzero(np.isinf(numbers.to_numpy()))):
                row = int(infinite[0])
                raise InputError(
                    f"column {name!r}, row {row + 1}: {numbers.iloc[row]}; allowed: finite numbers"
                )
            table[name] = numbers
        for name in self.columns["categorical"]:
            table[name] = x[name].astype("string")
        return pd.DataFrame(table, index=pd.RangeIndex(len(x)))

    def _array(self, x: Any) -> np.ndarray:
        import pandas as pd

        if isinstance(x, pd.DataFrame):  # flat features posted as a table
            x = x.to_numpy()
        x = np.asarray(x)
        shape = self.shape
        if x.dtype.kind not in "biuf":
            raise InputError(f"expected {self.expected()}; got values of type {x.dtype}")
        flat = int(np.prod(shape))
        if x.shape == shape or (len(shape) > 1 and x.shape == (flat,)):  # one sample
            x = x[None]
        if len(shape) > 1 and x.ndim == 2 and x.shape[1] == flat:
            x = x.reshape(len(x), *shape)  # flat rows, pixels in row-major order (scikit-learn's `data`)
        elif len(shape) == 2 and x.shape[1:] == (*shape, 1):  # grayscale with a channel axis
            x = x[..., 0]
        elif len(shape) == 3 and shape[2] == 1 and x.shape[1:] == shape[:2]:  # ... or without one
            x = x[..., None]
        if x.shape[1:] != shape:
            raise InputError(f"got an array of shape {x.shape}; expected {self.expected()}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise InputError(
                f"input {np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(1))[0]} holds NaN or infinity"
            )
        return x

    def labels(self, x: Any) -> np.ndarray | None:
        """The class indices of a table's label column, when the input has one (else None); -1
        where a row's label is empty."""
        target = self.dataset.get("target")
        if not self.is_table or target is None or target not in getattr(x, "columns", []):
            return None
        column = x[target].reset_index(drop=True)
        labels = np.full(len(column), -1, dtype=np.int64)
        present = column.notna().to_numpy()
        labels[present] = self.encode(column[present].tolist(), f"column {target!r}")
        return labels

    def encode(self, names: list[Any], where: str) -> np.ndarray:
        """Class names (as the user writes them) as class indices; unknown names are an error."""
        index = {name: i for i, name in enumerate(self.class_names)}
        names = [str(n) for n in names]
        unknown = sorted(set(names) - index.keys())
        if unknown:
            raise InputError(
                f"{where}: {', '.join(map(repr, unknown[:SHOWN]))} not among the model's classes "
                f"({', '.join(self.class_names)})"
            )
        return np.asarray([index[n] for n in names], dtype=np.int64)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_inputs(path: str | Path, predictor: Predictor) -> tuple[Any, np.ndarray | None]:
    """Raw inputs from a file or folder, and their class indices where the file has labels.

    Tables: a CSV or Parquet file (its label column, if present, gives the labels). Images and
    arrays: an .npy (x) or .npz (x, and labels y if present), one image file, or a folder of
    images (with one subfolder per class, the folder names give the labels).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder (--input)")
    suffix = path.suffix.lower()
    if predictor.is_table:
        if suffix not in (".csv", ".parquet", ".pq"):
            raise UserError(f"{path}: this model reads tables: a .csv or .parquet file")
        # As training read the user's file: a CSV's cells as text, so "01234" stays a category.
        x = owndata.read_frame(path, "csv" if suffix == ".csv" else "parquet")
        return x, predictor.labels(x)
    if suffix == ".npy":
        try:
            return io.load_array(path.parent, path.stem), None  # refuses pickled objects
        except (ValueError, OSError) as exc:
            raise UserError(f"{path}: not a NumPy array file ({exc})") from None
    if suffix == ".npz":
        arrays = io.load_npz(path)
        if "x" not in arrays:
            raise UserError(f"{path}: no array 'x' (the inputs); found {', '.join(arrays) or 'nothing'}")
        x, y = arrays["x"], arrays.get("y")
        return x, None if y is None else predictor.encode(owndata.label_values(y), f"{path}: y")
    if suffix == ".csv":
        return _pixel_rows(path, predictor)
    files, names = _image_files(path)
    images = [_read_image(f, predictor) for f in files]
    if len({i.shape for i in images}) > 1:
        sizes = {f: i.shape for f, i in zip(files, images, strict=True)}
        odd = next(f for f in files if sizes[f] != sizes[files[0]])
        size, first = ("x".join(map(str, sizes[f])) for f in (odd, files[0]))
        raise InputError(f"{odd}: {size} pixels, but {files[0]} is {first}; expected {predictor.expected()}")
    return np.stack(images), None if names is None else predictor.encode(names, str(path))


LABEL_COLUMNS = ("label", "labels", "y", "target", "class")  # a pixel CSV's label column, if any


def _pixel_rows(path: Path, predictor: Predictor) -> tuple[np.ndarray, np.ndarray | None]:
    """A CSV of flat pixel rows (as `fetch_openml` or a Kaggle MNIST CSV holds them), with or
    without a header; a header's label column (`LABEL_COLUMNS`) gives the labels."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise UserError(f"{path}: not a CSV of pixel rows ({exc})") from None
    labels = None
    first = frame.iloc[0].str.strip() if len(frame) else pd.Series(dtype=str)
    numbers = pd.to_numeric(first, errors="coerce")
    # A header: a name that is no number, or pandas' own 0, 1, 2, ... (`to_csv` of a bare array).
    named = (numbers.isna() & (first != "")).any()
    if len(frame) and (named or numbers.tolist() == list(range(len(first)))):
        frame.columns = [str(c).strip() for c in frame.iloc[0]]
        frame = frame.iloc[1:].reset_index(drop=True)
        label = next((c for c in frame.columns if c.lower() in LABEL_COLUMNS), None)
        if label is not None:
            labels = predictor.encode(frame.pop(label).tolist(), f"{path}: column {label!r}")
    values = frame.apply(pd.to_numeric, errors="coerce")
    if values.isna().to_numpy().any():
        row, col = np.argwhere(values.isna().to_numpy())[0]
        raise InputError(
            f"{path}: row {row + 1}, column {col + 1}: {frame.iat[row, col]!r} is not a number;"
            f" expected {predictor.expected()}"
        )
    return values.to_numpy(), labels


def _image_files(path: Path) -> tuple[list[Path], list[str] | None]:
    if path.is_file():
        return [path], None
    # Hidden files and what an OS leaves (Thumbs.db, __MACOSX/) are skipped, as in training.
    folders = sorted(d for d in path.iterdir() if d.is_dir() and not owndata.skipped(d.name))
    if folders:  # one subfolder per class: labelled
        files, names = [], []
        for folder in folders:
            for f in sorted(folder.rglob("*")):
                if f.is_file() and not owndata.hidden(f, folder) and f.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(f)
                    names.append(folder.name)
        if not files:
            raise UserError(
                f"{path}: no PNG or JPEG images in its class folders ({', '.join(d.name for d in folders)})"
            )
        return files, names
    files = sorted(
        f
        for f in path.iterdir()
        if f.is_file() and not owndata.skipped(f.name) and f.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise UserError(f"{path}: no PNG or JPEG images")
    return files, None


def _read_image(file: Path, predictor: Predictor) -> np.ndarray:
    """An image file as the model's training images were read (color, resizing)."""
    from annlab.errors import DataError

    shape = predictor.shape
    mode = "RGB" if len(shape) == 3 and shape[2] == 3 else "L"
    size = shape[:2] if predictor.dataset.get("image_size") else None
    try:
        return np.asarray(owndata.load_image(file, mode, size), dtype=np.uint8)
    except DataError as exc:
        raise InputError(str(exc)) from None
