"""The user's own data (`data.dataset`: csv, parquet, npz or images), read and checked.

`validate` runs every check before any other stage clears an output, and `fetch` reads the data
again to write it to data/raw/. Each refusal is a DataError that names the file, the column,
row or image, what was found and what is allowed.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from annlab import io
from annlab.errors import DataError, UserError
from annlab.params import DataParams, Params

if TYPE_CHECKING:
    import pandas as pd

MAX_CATEGORIES = 1000  # distinct values a categorical column may have (one input each after one-hot)
MIN_PER_CLASS = 3  # one sample of a class for each of the train, validation and test splits
IMAGE_FORMATS = {"PNG", "JPEG", "MPO"}  # MPO: a JPEG with extra frames
SHOWN = 5  # rows, values or files quoted in a message

Kind = Literal["table", "images", "features"]


@dataclass(frozen=True)
class OwnData:
    """The data as annlab trains on it: features, integer labels and the class names."""

    kind: Kind  # table: a DataFrame; images: (n, h, w[, c]); features: (n, k) numbers
    x: Any  # pd.DataFrame for a table, else np.ndarray
    labels: np.ndarray  # int64 indices into class_names
    class_names: list[str]
    numeric: list[str] = field(default_factory=list)  # a table's numeric columns
    categorical: list[str] = field(default_factory=list)  # a table's categorical columns

    def describe(self) -> str:
        """One line: how many samples, classes and inputs."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        classes = ", ".join(f"{n} {c}" for c, n in zip(self.class_names, counts, strict=True))
        if self.kind == "table":
            inputs = f"{len(self.numeric)} numeric + {len(self.categorical)} categorical columns"
        elif self.kind == "images":
            inputs = "images of " + "x".join(map(str, self.x.shape[1:]))
        else:
            inputs = f"{self.x.shape[1]} features"
        n_classes = len(self.class_names)
        return f"{len(self.labels)} samples, {inputs}; {n_classes} classes ({_clip(classes, 200)})"


def read(data: DataParams) -> OwnData:
    """Read and check the file or folder `data.path` names, as `data.dataset` says to."""
    readers = {"csv": read_table, "parquet": read_table, "npz": read_npz, "images": read_images}
    return readers[data.dataset](data)


def check(data: OwnData, params: Params, source: str) -> None:
    """Checks of the data against the rest of params: architectures and stratified splits."""
    if data.kind != "images" and (others := [m for m in params.grid.model if m != "ann"]):
        raise DataError(
            f"{source}: x holds {data.x.shape[1]} features per sample, not images; grid.model "
            f"lists {', '.join(others)}, which need images (n, height, width[, channels]): use [ann]"
        )
    check_classes(data.labels, data.class_names, params.data, source)


def check_classes(labels: np.ndarray, class_names: list[str], data: DataParams, source: str) -> None:
    """Refuse labels that the stratified train/validation/test split cannot divide."""
    if len(class_names) < 2:
        found = f"only class {class_names[0]!r}" if class_names else "no samples"
        raise DataError(f"{source}: {found}; a classifier needs at least two classes")
    counts = np.bincount(labels, minlength=len(class_names))
    # A subset keeps each class's share of the samples.
    share = min(data.subset or len(labels), len(labels)) / len(labels)
    few = [(name, int(n)) for name, n in zip(class_names, counts, strict=True) if n * share < MIN_PER_CLASS]
    if few:
        listed = ", ".join(f"{name!r} has {n}" for name, n in few[:SHOWN])
        within = f" (of data.subset={data.subset})" if share < 1 else ""
        raise DataError(
            f"{source}: too few samples to stratify the splits: class {listed}{within}; each class "
            f"needs at least {MIN_PER_CLASS}{within}, one for each of the train, validation and test "
            f"splits. Remove or merge the rare classes"
        )


def encode_labels(values: Sequence[Any], source: str, what: str) -> tuple[np.ndarray, list[str]]:
    """Integer labels and the class names as written, in numeric order when all are numbers."""
    names = [str(v) for v in values]
    unique = set(names)
    try:
        numbers = {name: float(name) for name in unique}
    except ValueError:
        order = sorted(unique)
    else:
        if any(not math.isfinite(x) for x in numbers.values()):
            raise DataError(f"{source}: {what} holds {sorted(unique)[:SHOWN]}; labels must be finite")
        if any(x != int(x) for x in numbers.values()):
            fractional = sorted(n for n, x in numbers.items() if x != int(x))
            raise DataError(
                f"{source}: {what} holds fractional numbers ({', '.join(fractional[:SHOWN])}): annlab "
                f"trains classifiers, whose labels are classes (integers or names), not measurements"
            )
        spelled: dict[float, list[str]] = {}
        for name, x in numbers.items():
            spelled.setdefault(x, []).append(name)
        if twice := [sorted(names) for names in spelled.values() if len(names) > 1]:
            raise DataError(
                f"{source}: {what} writes one number as different classes "
                f"({'; '.join(' and '.join(map(repr, t)) for t in twice[:SHOWN])}); write each class one way"
            )
        order = sorted(unique, key=lambda n: (numbers[n], n))
    index = {name: i for i, name in enumerate(order)}
    return np.array([index[n] for n in names], dtype=np.int64), order


# --- tables -----------------------------------------------------------------------------------


def read_table(data: DataParams) -> OwnData:
    """A CSV or Parquet file: the target column as labels, the others (less `drop`) as inputs."""
    import pandas as pd

    path = _existing_file(data.path, data.dataset)
    # Rows by position: a Parquet file keeps its index (after a filter, 100, 103, ...), which
    # must not line the columns up by label.
    frame = read_frame(path, data.dataset).reset_index(drop=True)
    frame.columns = [str(c) for c in frame.columns]
    if frame.empty:
        raise DataError(f"{path}: holds no rows{'' if len(frame.columns) else ' and no columns'}")
    columns = list(frame.columns)
    assert data.target is not None  # the schema requires it for tables
    _require_columns(path, columns, [data.target], "data.target")
    _require_columns(path, columns, data.drop, "data.drop")
    _require_columns(path, columns, data.categorical or [], "data.categorical")
    row = _row_namer(data.dataset)

    target = frame[data.target]
    if missing := list(np.flatnonzero(target.isna().to_numpy())):
        rows = ", ".join(row(i) for i in missing[:SHOWN])
        raise DataError(
            f"{path}: the target column {data.target!r} has {len(missing)} missing values "
            f"({rows}{', …' if len(missing) > SHOWN else ''}); every sample needs a label: fill or "
            "remove them"
        )
    labels, class_names = encode_labels(target.tolist(), str(path), f"the target column {data.target!r}")

    features = [c for c in columns if c != data.target and c not in data.drop]
    if not features:
        raise DataError(f"{path}: no input columns left besides the target {data.target!r} and data.drop")
    numeric: list[str] = []
    categorical: list[str] = []
    table = {}
    for name in features:
        column = frame[name]
        if column.isna().all():
            raise DataError(
                f"{path}: column {name!r} is entirely empty; leave it out with data.drop: [{name}]"
            )
        if (data.categorical is not None and name in data.categorical) or _is_text(column, data):
            values = column.astype("string")  # missing values stay missing (pd.NA)
            n_distinct = values.nunique(dropna=True)
            if n_distinct > MAX_CATEGORIES:
                raise DataError(
                    f"{path}: column {name!r} has {n_distinct} distinct values, more than the "
                    f"{MAX_CATEGORIES} a categorical column may have (each becomes an input); an id or "
                    f"free text does not generalize: leave it out with data.drop: [{name}]"
                )
            table[name] = values
            categorical.append(name)
        else:
            table[name] = _numbers(column, name, path, row, listed=data.categorical is not None)
            numeric.append(name)
    x = pd.DataFrame(table, index=pd.RangeIndex(len(frame)))
    return OwnData("table", x, labels, class_names, numeric, categorical)


def read_frame(path: Path, kind: str) -> pd.DataFrame:
    """A CSV (every cell as text) or Parquet file as a DataFrame; DataError naming what is wrong."""
    import pandas as pd

    try:
        if kind == "csv":
            # Every cell as text: which columns are numbers is decided here, cell by cell, so a
            # stray word in a numeric column is found and named rather than silently kept.
            options = {"dtype": str, "skipinitialspace": True, "encoding": "utf-8-sig"}
            frame = pd.read_csv(path, **options)
            header = pd.read_csv(path, header=None, nrows=1, na_filter=False, **options)  # NA is a name
            _unique_header(path, header.iloc[0].tolist())
            return frame
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty (a CSV file needs a header row and data rows)") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: not a well-formed CSV file: {exc}".rstrip()) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); save the CSV as UTF-8") from None
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        what = "a Parquet file" if kind == "parquet" else "a readable CSV file"
        raise DataError(f"{path}: not {what}: {exc}") from None


def _unique_header(path: Path, names: list[Any]) -> None:
    """Refuse a CSV header naming a column twice: pandas would rename the copy (`x.1`), and the
    served model would then ask its users for a column their files do not have."""
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(names, start=1):
        if isinstance(name, str) and name:  # pandas names each empty one apart (Unnamed: 3)
            positions.setdefault(name, []).append(i)
    for name, where in positions.items():
        if len(where) > 1:
            raise DataError(
                f"{path}: the header names column {name!r} {len(where)} times (columns "
                f"{', '.join(map(str, where))}); column names must be unique: rename or remove the copies"
            )


def _row_namer(kind: str) -> Any:
    if kind == "csv":
        return lambda i: f"line {i + 2}"  # line 1 is the header
    return lambda i: f"row {i + 1}"


def _is_text(column: pd.Series, data: DataParams) -> bool:
    """Whether a column (with `data.categorical` null) is categorical: it holds no numbers at all,
    or fewer numbers than words. A column that is mostly numbers is numeric, and its words are
    reported as errors by `_numbers`."""
    import pandas as pd

    if data.categorical is not None:
        return False
    if pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
        present = column.dropna()
        parsed = pd.to_numeric(present.astype(str), errors="coerce")
        return int(parsed.notna().sum()) <= len(present) / 2
    return False


def _numbers(column: pd.Series, name: str, path: Path, row: Any, *, listed: bool) -> pd.Series:
    """A numeric column as float64 (missing values NaN); text or infinities in it are errors."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(column):
        return column.astype("float64")
    parsed = pd.to_numeric(column, errors="coerce") if not pd.api.types.is_numeric_dtype(column) else column
    parsed = parsed.astype("float64")
    bad = np.flatnonzero((parsed.isna() & column.notna()).to_numpy())
    if len(bad):
        i = int(bad[0])
        found = f"{row(i)} has {column.iloc[i]!r} ({len(bad)} such value{'s' if len(bad) > 1 else ''})"
        if listed:
            raise DataError(
                f"{path}: column {name!r} is not in data.categorical, so it must hold numbers, but "
                f"{found}; list it in data.categorical if it holds categories, or fix the values"
            )
        raise DataError(
            f"{path}: column {name!r} holds numbers, but {found}; allowed: numbers, or an empty cell "
            f"for a missing value (filled with the training median). Fix the value or, if the column "
            f"holds categories, list it in data.categorical"
        )
    if len(infinite := np.flatnonzero(np.isinf(parsed.to_numpy()))):
        i = int(infinite[0])
        raise DataError(f"{path}: column {name!r}, {row(i)}: {parsed.iloc[i]}; allowed: finite numbers")
    return parsed


def _require_columns(path: Path, columns: list[str], wanted: Iterable[str], key: str) -> None:
    for name in wanted:
        if name not in columns:
            hint = difflib.get_close_matches(name, columns, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            listed = ", ".join(map(repr, columns[:50])) + (", …" if len(columns) > 50 else "")
            sep = (
                " (is the file separated by ';'? annlab reads comma-separated CSV)"
                if (len(columns) == 1 and ";" in columns[0])
                else ""
            )
            raise DataError(f"{path}: {key} names {name!r}, which is not a column{suggestion} "
                            f"(the columns are: {listed}){sep}")  # fmt: skip


# --- image folders ---------------------------------------------------------------------------


def read_images(data: DataParams) -> OwnData:
    """A folder with one subfolder per class, each holding PNG or JPEG images (any depth)."""

    root = Path(data.path)
    if not root.exists():
        raise DataError(f"{root}: no such folder (data.path); data.dataset images reads a folder")
    if not root.is_dir():
        raise DataError(
            f"{root}: a file, not a folder; data.dataset images reads a folder with one subfolder "
            f"per class (data.dataset csv, parquet or npz read a file)"
        )
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not skipped(d.name))
    if not folders:
        raise DataError(
            f"{root}: no class subfolders; put each class's images in a subfolder named after the "
            f"class, e.g. {root}/cat/1.png and {root}/dog/1.png"
        )
    mode = "L" if data.color == "grayscale" else "RGB"
    images: list[np.ndarray] = []
    names: list[str] = []
    first: tuple[Path, tuple[int, int]] | None = None
    for folder in folders:
        files = sorted(f for f in folder.rglob("*") if f.is_file() and not hidden(f, folder))
        if not files:
            raise DataError(f"{folder}: class {folder.name!r} holds no images (PNG or JPEG)")
        for file in files:
            pixels = load_image(file, mode, data.image_size)  # with image_size, all of that size
            if first is None:
                first = (file, pixels.size)
            elif pixels.size != first[1]:
                (w0, h0), (w, h) = first[1], pixels.size
                raise DataError(
                    f"{file}: {h}x{w} pixels (height x width), but {first[0]} is {h0}x{w0}; images "
                    f"of different sizes need data.image_size: [height, width] to resize them to"
                )
            images.append(np.asarray(pixels, dtype=np.uint8))
            names.append(folder.name)
    labels, class_names = encode_labels(names, str(root), "the class folders")
    # Folder order is sorted text; class names in numeric order when every folder is a number.
    return OwnData("images", np.stack(images), labels, class_names)


def load_image(file: Path, mode: str, size: Sequence[int] | None = None) -> Any:
    """A PNG or JPEG file as a Pillow image in `mode` (L or RGB), upright as its EXIF says; 16-bit
    images scaled to 8 bits rather than clipped; resized to `size` ([height, width]) if given.
    DataError for anything else."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Over Pillow's limit Pillow only warns, and over twice the limit raises: both refused.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(file)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise DataError(too_large(file)) from None
    except UnidentifiedImageError:
        raise DataError(f"{file}: not an image (allowed: PNG or JPEG files only)") from None
    except (OSError, SyntaxError, ValueError) as exc:  # an empty or unreadable file
        raise DataError(f"{file}: cannot be read as an image ({exc})") from None
    try:
        with image:
            # MPO: a JPEG with extra frames (phones' HDR photos); the first frame is the photo.
            if image.format not in IMAGE_FORMATS:
                raise DataError(f"{file}: a {image.format} image; allowed: PNG or JPEG files only")
            image.load()
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                wide = np.asarray(image, dtype=np.float64)
                image = Image.fromarray(np.round(wide / 257.0).clip(0, 255).astype(np.uint8))
            image = image.convert(mode)
            if size:
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)  # Pillow: (w, h)
            return image
    except UnidentifiedImageError:
        raise DataError(f"{file}: not an image (allowed: PNG or JPEG files only)") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise DataError(f"{file}: cannot be decoded as an image ({exc})") from None


# What operating systems leave in folders of images: Windows' thumbnail caches and folder
# settings, and the resource forks macOS adds to a zip (its hidden `._x.png` files already are).
OS_FILES = {"thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx"}


def too_large(file: Path) -> str:
    """Why an image over Pillow's pixel limit is refused (it could be a decompression bomb)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # read the header alone, which is small whatever the image
    try:
        with Image.open(file) as image:
            width, height = image.size
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return (
        f"{file}: {width}x{height} pixels ({width * height:,}), over the limit of {limit:,} pixels an"
        " image may have (an image that large is refused: it could be a decompression bomb)"
    )


def skipped(name: str) -> bool:
    """Whether a file or folder in an image folder is no sample: hidden, or left by the OS."""
    return name.startswith(".") or name.lower() in OS_FILES


def hidden(file: Path, under: Path) -> bool:
    return any(skipped(part) for part in file.relative_to(under).parts)


# --- NumPy arrays ----------------------------------------------------------------------------


def read_npz(data: DataParams) -> OwnData:
    """An .npz with `x` (n, h, w), (n, h, w, c) or (n, features) and labels `y` (n,)."""
    path = _existing_file(data.path, "npz")
    try:
        arrays = io.load_npz(path)
    except UserError as exc:
        raise DataError(str(exc)) from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(
            f"{path}: no array {' or '.join(map(repr, missing))}; an npz for annlab holds "
            f"'x' (the samples) and 'y' (their labels); found: "
            f"{', '.join(map(repr, arrays)) or 'nothing'}"
        )
    x, y = arrays["x"], arrays["y"]
    if x.ndim not in (2, 3, 4) or x.dtype.kind not in "biuf":
        raise DataError(
            f"{path}: x is {x.dtype} of shape {x.shape}; allowed: numbers shaped (n, height, width), "
            f"(n, height, width, channels) or (n, features)"
        )
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.dtype.kind not in "biufUS":
        hint = ""
        binary = y.ndim == 2 and y.size and y.dtype.kind in "biuf" and np.all((y == 0) | (y == 1))
        if binary and np.all(y.sum(1) == 1):
            hint = "; it looks one-hot encoded: save the class numbers instead, y.argmax(axis=1)"
        raise DataError(
            f"{path}: y is {y.dtype} of shape {y.shape}; allowed: one label per sample, (n,){hint}"
        )
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} samples but y has {len(y)}; they must be the same length")
    if len(x) == 0:
        raise DataError(f"{path}: x and y hold no samples")
    if x.dtype.kind == "f" and len(bad := np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))):
        raise DataError(
            f"{path}: x[{bad[0]}] holds NaN or infinity ({len(bad)} samples do); allowed: finite numbers"
        )
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DataError(f"{path}: y[{np.flatnonzero(~np.isfinite(y))[0]}] is not a finite label")
    labels, class_names = encode_labels(label_values(y), str(path), "y")
    return OwnData("features" if x.ndim == 2 else "images", x, labels, class_names)


def label_values(y: np.ndarray) -> list[Any]:
    """An array's labels as Python values whose `str` is the class name: bytes decoded, whole
    floats as integers (3.0 is class 3)."""
    if y.dtype.kind == "S":
        y = y.astype(str)
    if y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
        y = y.astype(np.int64)
    return y.tolist()


def _existing_file(path_text: str, kind: str) -> Path:
    path = Path(path_text)
    if not path.exists():
        raise DataError(f"{path}: no such file (data.path); data.dataset {kind} reads a file")
    if path.is_dir():
        raise DataError(f"{path}: a folder, not a file; data.dataset {kind} reads one file (data.path)")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    return path


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# --- data/raw/<dataset>/, as fetch writes it -------------------------------------------------

RAW_INFO = "info.json"


def save_raw(folder: Path, data: OwnData, source: str) -> None:
    """Write `data` to `folder`: info.json, labels.npy, and x.npy (arrays) or table.parquet."""
    from annlab import io

    folder.mkdir(parents=True, exist_ok=True)
    io.save_arrays(folder, {"labels": data.labels})
    if data.kind == "table":
        data.x.to_parquet(folder / "table.parquet", index=False)
    else:
        io.save_arrays(folder, {"x": data.x})
    info = {
        "kind": data.kind,
        "source": source,
        "class_names": data.class_names,
        "numeric": data.numeric,
        "categorical": data.categorical,
    }
    io.write_json(folder / RAW_INFO, info)


def load_raw(folder: Path) -> OwnData:
    """What `save_raw` wrote."""
    from annlab import io

    info = io.read_json(folder / RAW_INFO)
    if info["kind"] == "table":
        import pandas as pd

        x = pd.read_parquet(folder / "table.parquet")
    else:
        x = io.load_array(folder, "x")
    labels = io.load_array(folder, "labels")
    return OwnData(info["kind"], x, labels, info["class_names"], info["numeric"], info["categorical"])
