"""Stage `preprocess`: stratified train/validation/test split and a scaler fitted on train only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from annlab import cli, datasets, io
from annlab.errors import ParamsError
from annlab.params import DataParams, load_params


def split_indices(labels: np.ndarray, data: DataParams, seed: int) -> dict[str, np.ndarray]:
    """Stratified, seeded indices of the train, val and test splits (sizes are fractions of all)."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    n_total = min(data.subset or len(labels), len(labels))
    n_classes = len(np.unique(labels))
    smallest = min(data.test_size, data.val_size) * n_total
    if smallest < n_classes:
        # Stratification needs one sample of each class in every split.
        raise ParamsError(
            f"params.yaml: data.subset={n_total} with test_size={data.test_size} and "
            f"val_size={data.val_size} leaves {int(smallest)} samples in the smallest split; "
            f"each split needs at least {n_classes} (one per class): raise data.subset or the sizes"
        )
    if data.subset is not None and data.subset < len(labels):
        index, _ = train_test_split(index, train_size=data.subset, stratify=labels, random_state=seed)
    rest, test = train_test_split(index, test_size=data.test_size, stratify=labels[index], random_state=seed)
    train, val = train_test_split(
        rest,
        test_size=data.val_size / (1 - data.test_size),
        stratify=labels[rest],
        random_state=seed,
    )
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def fit_scaler(kind: str, x_train: np.ndarray) -> dict[str, Any]:
    """Scaler state fitted on the training features: x' = (x - shift) / scale."""
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    n = x_train.shape[1]
    if kind == "standard":
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


def main(argv: list[str] | None = None) -> None:
    """Split, scale and save the arrays, the scaler state and a description of the data."""
    p = cli.parser(__doc__)
    p.add_argument("--raw", type=Path, required=True, help="fetch's output folder")
    p.add_argument("--out", type=Path, required=True, help="folder for the processed arrays")
    args = p.parse_args(argv)
    params = load_params(args.params)

    images = io.load_array(args.raw, "images")
    labels = io.load_array(args.raw, "labels")
    features = images.reshape(len(images), -1)
    # One split per training seed, each in seed-<n>/ (`io.split_dir`), or, with one training
    # seed or data.split_per_seed false, one split at the top.
    split_seeds = params.seeds if params.data.split_per_seed else [params.seed]
    per_seed = len(split_seeds) > 1
    with io.atomic_path(args.out) as tmp:
        for seed in split_seeds:
            splits = split_indices(labels, params.data, seed)
            scaler = fit_scaler(params.data.scaler, features[splits["train"]].astype(np.float64))
            arrays = {}
            for name, idx in splits.items():
                arrays[f"x_{name}"] = apply_scaler(scaler, features[idx])
                arrays[f"y_{name}"] = labels[idx]
            folder = tmp / io.seed_name(seed) if per_seed else tmp
            io.save_arrays(folder, arrays)
            io.write_json(folder / "scaler.json", scaler)
        info = {
            "dataset": params.data.dataset,
            "image_shape": list(images.shape[1:]),
            "n_features": int(features.shape[1]),
            "class_names": datasets.CLASS_NAMES[params.data.dataset],
            # stratified with the same fractions: every seed's split has these sizes
            "sizes": {name: len(idx) for name, idx in splits.items()},
            "split_seeds": split_seeds,
        }
        io.write_json(tmp / "dataset.json", info)
    seeds = ", ".join(map(str, split_seeds))
    where = f"one split per seed ({seeds})" if per_seed else f"seed {seeds}"
    print(f"preprocess: {info['sizes']} {where} scaler={params.data.scaler} -> {args.out}")


if __name__ == "__main__":
    cli.run(main)
