"""Stage `preprocess`: stratified train/validation/test splits, and the inputs' preprocessing
(scaler; for tables imputation and one-hot too) fitted on each training split only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from annlab import io, runtime
from annlab.data import features, owndata
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


def rows(x: Any, index: np.ndarray) -> Any:
    """The rows `index` of an array or a DataFrame."""
    return x.iloc[index].reset_index(drop=True) if hasattr(x, "iloc") else x[index]


def save_raw_test(folder: Path, raw: owndata.OwnData, index: np.ndarray, target: str | None) -> None:
    """The split's test rows as the user's data has them, labelled with the class names: what a
    model of this split scores exactly as evaluate does (`annlab predict --input`)."""
    names = np.asarray(raw.class_names)[raw.labels[index]]
    if raw.kind == "table":
        rows(raw.x, index).assign(**{target or "label": names}).to_parquet(
            folder / "test.parquet", index=False
        )
    else:
        io.save_npz(folder / "test.npz", {"x": raw.x[index], "y": names})


def main(argv: list[str] | None = None) -> None:
    """Split, transform and save the arrays, the fitted preprocessing and a description of the data."""
    p = runtime.parser(__doc__)
    p.add_argument("--raw", type=Path, required=True, help="fetch's output folder")
    p.add_argument("--out", type=Path, required=True, help="folder for the processed arrays")
    args = p.parse_args(argv)
    params = load_params(args.params)

    raw = owndata.load_raw(args.raw)
    # One split per training seed, each in seed-<n>/ (`io.split_dir`), or, with one training
    # seed or data.split_per_seed false, one split at the top.
    split_seeds = params.seeds if params.data.split_per_seed else [params.seed]
    per_seed = len(split_seeds) > 1
    with io.atomic_path(args.out) as tmp:
        for seed in split_seeds:
            splits = split_indices(raw.labels, params.data, seed)
            train = rows(raw.x, splits["train"])
            if raw.kind == "table":
                state = features.fit_table(train, raw.numeric, raw.categorical, params.data.scaler)
            else:
                state = features.fit_array(params.data.scaler, train)
            arrays = {}
            for name, idx in splits.items():
                arrays[f"x_{name}"] = features.transform(state, rows(raw.x, idx))
                arrays[f"y_{name}"] = raw.labels[idx]
            folder = tmp / io.seed_name(seed) if per_seed else tmp
            io.save_arrays(folder, arrays)
            io.write_json(folder / "preprocessing.json", state)
            save_raw_test(folder, raw, splits["test"], params.data.target)
        info = {
            "dataset": params.data.label,
            "kind": raw.kind,
            # one sample as the network's input layers see it; null for a table, whose width
            # (after one-hot) is each split's own
            "input_shape": None if raw.kind == "table" else list(raw.x.shape[1:]),
            "input_dtype": None if raw.kind == "table" else str(raw.x.dtype),  # as the data has it
            "class_names": raw.class_names,
            "columns": (
                {"numeric": raw.numeric, "categorical": raw.categorical} if raw.kind == "table" else None
            ),
            # How a user's raw inputs become the samples above (`annlab predict`, served models).
            "target": params.data.target if raw.kind == "table" else None,
            "image_size": params.data.image_size if params.data.dataset == "images" else None,
            "color": params.data.color if params.data.dataset == "images" else None,
            # stratified with the same fractions: every seed's split has these sizes
            "sizes": {name: len(idx) for name, idx in splits.items()},
            "split_seeds": split_seeds,
            # The raw data's identity, whatever the split: the registry's champion follows it.
            "raw_digest": io.data_digest(args.raw),
        }
        io.write_json(tmp / "dataset.json", info)
    seeds = ", ".join(map(str, split_seeds))
    where = f"one split per seed ({seeds})" if per_seed else f"seed {seeds}"
    print(f"preprocess: {info['sizes']} {where} scaler={params.data.scaler} -> {args.out}")


if __name__ == "__main__":
    runtime.run(main)
