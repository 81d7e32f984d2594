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
    """The state of an array dataset: a scaler over its flattened features."""
    flat = x_train.reshape(len(x_train), -1).astype(np.float64)
    return {"kind": "array", "scaler": fit_scaler(scaler, flat)}


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
    state = {
        "kind": "table",
        "numeric": {"columns": numeric, "median": medians.tolist(), "scaler": fit_scaler(scaler, filled)},
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
