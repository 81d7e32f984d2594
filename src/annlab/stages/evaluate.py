"""Stage `evaluate@<optimizer>-<activation>`: test-set metrics of one cell, per seed and over seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from annlab import cli, io, metrics
from annlab.errors import UserError
from annlab.params import load_params


def predictions_csv(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> str:
    """One row per test sample, in the shape `dvc plots` wants for a confusion matrix."""
    rows = ["actual,predicted"]
    rows += [f"{class_names[t]},{class_names[p]}" for t, p in zip(y_true, y_pred, strict=True)]
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Predict the test split with each seed's model; write per-seed and per-cell metrics."""
    p = cli.parser(__doc__)
    p.add_argument("--model-dir", type=Path, required=True, help="train's output folder")
    p.add_argument("--data", type=Path, required=True, help="preprocess's output folder")
    p.add_argument("--metrics", type=Path, required=True, help="the cell's metrics JSON (dvc metrics)")
    p.add_argument("--report", type=Path, required=True, help="per-seed metrics and per-class report JSON")
    p.add_argument("--predictions", type=Path, required=True, help="actual/predicted CSV, all seeds")
    args = p.parse_args(argv)
    load_params(args.params)  # a bad params file stops here too, before any output is touched

    import keras

    info = io.read_json(args.data / "dataset.json")
    names = info["class_names"]
    x_test, y_test = io.load_array(args.data, "x_test"), io.load_array(args.data, "y_test")
    seeds: list[dict[str, Any]] = []
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    actual: list[np.ndarray] = []
    predicted: list[np.ndarray] = []
    for seed_dir in io.by_seed(d for d in args.model_dir.iterdir() if d.is_dir()).values():
        meta = io.read_json(seed_dir / "meta.json")
        entry: dict[str, Any] = {
            "seed": meta["seed"],
            "diverged": meta["diverged"],
            "diverged_epoch": meta["diverged_epoch"],
            **{k: meta[k] for k in ("epochs_run", "best_val_accuracy", "best_epoch")},
        }
        if meta["diverged"]:
            # Its weights are NaN: there is nothing to test, and a made-up score would mislead.
            entry.update({k: None for k in metrics.TEST_METRICS}, n_test=len(y_test))
        else:
            model = keras.saving.load_model(seed_dir / "model.keras", safe_mode=True)
            probs = model.predict(x_test, verbose=0)
            scalars, report = metrics.evaluate(y_test, probs, meta["loss"], names)
            entry.update(scalars, classes=report["classes"], confusion_matrix=report["confusion_matrix"])
            confusion += np.asarray(report["confusion_matrix"])
            actual.append(y_test)
            predicted.append(probs.argmax(axis=1))
        seeds.append(entry)
    if not seeds:
        raise UserError(f"{args.model_dir}: no seed-<n> folders; run the train stage first")

    summary = metrics.cell_summary(seeds)
    io.write_json(args.metrics, summary)
    io.write_json(args.report, {"class_names": names, "confusion_matrix": confusion.tolist(), "seeds": seeds})
    y_true = np.concatenate(actual) if actual else np.empty(0, dtype=np.int64)
    y_pred = np.concatenate(predicted) if predicted else np.empty(0, dtype=np.int64)
    io.write_text(args.predictions, predictions_csv(y_true, y_pred, names))
    cell = args.model_dir.name
    shown = " ".join(f"{k}={v:.4f}" for k, v in summary.items() if isinstance(v, float))
    print(
        f"evaluate: {cell}: {shown}" + (f" ({summary['diverged']} diverged)" if summary["diverged"] else "")
    )


if __name__ == "__main__":
    cli.run(main)
