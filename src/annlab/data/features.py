"""Inputs as the network reads them: a state fitted on the training split only, kept as JSON (no
pickle), and the function that applies it to any rows.

- Arrays (images, npz features): one scaler per feature.
- Tables: numeric columns get the training median for a missing value, then the scaler;
  categorical columns the most frequent training value, then one-hot, where a category that
  training never saw encodes as all zeros.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def fit_scaler(kind: str, x_train: np.ndarray) -> dict[str, Any]:
    """Scaler state fitted on the training features: x' = (x - shift) / scale."""
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    n = x_train.shape[1]
    if n == 0:  # a table of categorical columns only
        shift, scale = np.zeros(0), np.ones(0)
    elif kind == "standard":
        s = StandardScaler().fit(x_train)
        shift, scale = s.mean_, s.scale_
    elif kind == "minmax":
        s = MinMaxScaler().fit(x_train)
        shift, scale = s.data_min_, 1.0 / s.scale_  # sklearn's scale_ is 1 / range (0 -> 1)
    elif kind == "none":
        shift, scale = np.zeros(n), np.ones(n)
    else:
        raise ValueError(f"unknown scaler {kind!r}")
    return {"kind": kind, "shift": shift.tolist(), "scale": scale.tolist()}


def apply_scaler(state: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Apply a fitted scaler; float32, as the network trains in float32."""
    shift = np.asarray(state["shift"], dtype=np.float64)
    scale = np.asarray(state["scale"], dtype=np.float64)
    return ((x.astype(np.float64) - shift) / scale).astype(np.float32)


def fit_array(scaler: str, x_train: np.ndarray) -> dict[str, Any]:
    """The state of an array dataset: a scaler over its flattened features, and the range of
    the training values (pixels' min and max), against which inputs are checked."""
    flat = x_train.reshape(len(x_train), -1).astype(np.float64)
    value_range = [float(flat.min()), float(flat.max())] if flat.size else None
    return {"kind": "array", "scaler": fit_scaler(scaler, flat), "range": value_range}


def fit_table(frame: pd.DataFrame, numeric: list[str], categorical: list[str], scaler: str) -> dict[str, Any]:
    """The state of a table, fitted on its training rows (`frame`)."""
    values = frame[numeric].to_numpy(dtype=np.float64, na_value=np.nan)
    # A column with no value in the training rows gets 0 (and then the scaler's identity).
    medians = np.array([np.median(c[~np.isnan(c)]) if (~np.isnan(c)).any() else 0.0 for c in values.T])
    filled = np.where(np.isnan(values), medians, values)
    columns = []
    for name in categorical:
        counts = frame[name].dropna().astype(str).value_counts()
        # Ties go to the smallest value, as scikit-learn's SimpleImputer breaks them.
        most = min(v for v, n in counts.items() if n == counts.max()) if len(counts) else ""
        columns.append({"name": name, "most_frequent": most, "categories": sorted({*counts.index, most})})
    # Each numeric column's training range, against which inputs are checked (None: no value).
    ranges = [[float(np.nanmin(c)), float(np.nanmax(c))] if (~np.isnan(c)).any() else None for c in values.T]
    state = {
        "kind": "table",
        "numeric": {
            "columns": numeric,
            "median": medians.tolist(),
            "scaler": fit_scaler(scaler, filled),
            "range": ranges,
        },
        "categorical": columns,
    }
    state["features"] = feature_names(state)
    return state


def feature_names(state: dict[str, Any]) -> list[str]:
    """The network's inputs by name: numeric columns, then `<column>=<category>` per category."""
    if state["kind"] != "table":
        return []
    names = list(state["numeric"]["columns"])
    for column in state["categorical"]:
        names += [f"{column['name']}={c}" for c in column["categories"]]
    return names


def transform(state: dict[str, Any], x: Any) -> np.ndarray:
    """Rows (a DataFrame for a table, else an array) as the network's float32 features."""
    if state["kind"] == "array":
        return apply_scaler(state["scaler"], np.asarray(x).reshape(len(x), -1))
    numeric = state["numeric"]
    values = x[numeric["columns"]].to_numpy(dtype=np.float64, na_value=np.nan)
    values = np.where(np.isnan(values), np.asarray(numeric["median"]), values)
    parts = [apply_scaler(numeric["scaler"], values)]
    for column in state["categorical"]:
        text = x[column["name"]].astype("string").fillna(column["most_frequent"]).to_numpy(dtype=object)
        categories = np.asarray(column["categories"], dtype=object)
        parts.append((text[:, None] == categories[None, :]).astype(np.float32))
    return np.concatenate(parts, axis=1) if parts else np.empty((len(x), 0), np.float32)


# When inputs look unlike the training data (one place; docs/guide.md, "Predicting"): a warning
# when more than OUTSIDE_SHARE of the values lie outside the training range by more than
# OUTSIDE_MARGIN of that range, or when an image lies wholly within 0-1 although the training
# pixels reached UNIT_SCALE_TRAINED or more (pixels scaled to 0-1 for a model of 0-16 or 0-255).
OUTSIDE_SHARE = 0.01
OUTSIDE_MARGIN = 0.10
UNIT_SCALE_TRAINED = 2.0


def _outside(values: np.ndarray, low: float, high: float) -> float:
    """The share of `values` beyond [low, high] by more than OUTSIDE_MARGIN of its width (of
    the values' size where training saw one value only)."""
    margin = OUTSIDE_MARGIN * ((high - low) or max(abs(low), abs(high)))
    return float(((values < low - margin) | (values > high + margin)).mean()) if values.size else 0.0


def input_warnings(state: dict[str, Any], x: Any, images: bool = True) -> list[str]:
    """One line per way raw inputs (`x`: rows as `transform` takes them) look unlike the training
    data; the prediction still comes out. [] for a state fitted before annlab kept its ranges.
    `images`: whether an array's rows are images (the 0-1 check is for pixels only)."""
    if len(x) == 0:
        return []
    if state["kind"] == "array":
        if not state.get("range"):
            return []
        low, high = state["range"]
        values = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if not values.size:
            return []
        trained = f"the model was trained on {low:g}-{high:g}"
        per_image = (values >= 0).all(axis=1) & (values <= 1).all(axis=1) & (values.max(axis=1) > 0)
        if images and high >= UNIT_SCALE_TRAINED and per_image.any():
            return [
                f"{int(per_image.sum())} of {len(values)} inputs lie wholly within 0-1: pixels look"
                f" scaled to 0-1; {trained}"
            ]
        share = _outside(values, low, high)
        if share > OUTSIDE_SHARE:
            hint = "; pixels look like 0-255" if high <= 16 < values.max() <= 255 else ""
            return [
                f"{share:.1%} of the input values lie outside the training range by more than"
                f" {OUTSIDE_MARGIN:.0%} of it (inputs {values.min():g}-{values.max():g}){hint}; {trained}"
            ]
        return []
    lines = []
    numeric = state["numeric"]
    for name, bounds in zip(numeric["columns"], numeric.get("range") or [], strict=False):
        column = np.asarray(x[name], dtype=np.float64)
        column = column[~np.isnan(column)]
        if bounds and (share := _outside(column, *bounds)) > OUTSIDE_SHARE:
            lines.append(
                f"column {name!r}: {share:.1%} of its values lie outside the training range"
                f" {bounds[0]:g}-{bounds[1]:g} by more than {OUTSIDE_MARGIN:.0%} of it"
                f" (inputs {column.min():g}-{column.max():g})"
            )
    if "range" not in numeric:
        return lines  # a state fitted before annlab kept its ranges: categories unchecked too
    for column in state["categorical"]:
        seen = x[column["name"]].dropna().astype(str)
        unseen = sorted(set(seen) - set(column["categories"]))
        if unseen:
            shown = ", ".join(map(repr, unseen[:5])) + (", ..." if len(unseen) > 5 else "")
            known = column["categories"]
            lines.append(
                f"column {column['name']!r}: {shown} never seen in training (encoded as no category);"
                f" known: {', '.join(known[:10])}{', ...' if len(known) > 10 else ''}"
            )
    return lines
