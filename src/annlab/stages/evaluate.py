"""Stage `evaluate`: test-set metrics of every cell of the grid, per seed and over seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from annlab import io, runtime
from annlab.errors import UserError
from annlab.params import load_params
from annlab.report import metrics


def predictions_csv(
    seeds: list[int], y_true: list[np.ndarray], probs: list[np.ndarray], class_names: list[str]
) -> str:
    """One row per test sample of each seed: the seed, the actual and predicted class (the shape
    `dvc plots` wants for a confusion matrix) and each class's predicted probability (6
    significant digits); class names quoted where a comma or quote in them needs it."""
    import csv
    import io as stdio

    text = stdio.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["seed", "actual", "predicted", *(f"p({name})" for name in class_names)])
    for seed, truth, p in zip(seeds, y_true, probs, strict=True):
        for t, row in zip(truth, p, strict=True):
            writer.writerow(
                [seed, class_names[t], class_names[int(row.argmax())], *(f"{float(v):.6g}" for v in row)]
            )
    return text.getvalue()


def evaluate_cell(model_dir: Path, data_dir: Path, names: list[str]) -> dict:
    """Test one cell's model of each seed on that seed's test split: per-seed metrics, the
    summed confusion matrix and every test sample's prediction."""
    from annlab.train.model import load_model, probabilities

    seeds: list[dict[str, Any]] = []
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    tested: list[int] = []
    actual: list[np.ndarray] = []
    predicted: list[np.ndarray] = []
    for seed_dir in io.by_seed(d for d in model_dir.iterdir() if d.is_dir()).values():
        meta = io.read_json(seed_dir / "meta.json")
        split = io.split_dir(data_dir, meta["seed"])
        x_test, y_test = io.load_array(split, "x_test"), io.load_array(split, "y_test")
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
            # Not compiled: predicting needs no optimizer state.
            model = load_model(seed_dir / "model.keras")
            probs = probabilities(model, x_test)
            scalars, report = metrics.evaluate(y_test, probs, meta["loss"], names)
            entry.update(scalars, classes=report["classes"], confusion_matrix=report["confusion_matrix"])
            confusion += np.asarray(report["confusion_matrix"])
            tested.append(int(meta["seed"]))
            actual.append(y_test)
            predicted.append(probs)
        seeds.append(entry)
    if not seeds:
        raise UserError(f"{model_dir}: no seed-<n> folders; run the train stage first")
    return {
        "summary": metrics.cell_summary(seeds),
        "report": {"class_names": names, "confusion_matrix": confusion.tolist(), "seeds": seeds},
        "predictions": predictions_csv(tested, actual, predicted, names),
    }


def main(argv: list[str] | None = None) -> None:
    """Predict the test split with every cell's models, in one process (TensorFlow loads once);
    write per-seed and per-cell metrics, one file per cell."""
    p = runtime.parser(__doc__)
    p.add_argument("--models", type=Path, required=True, help="train's output folders, one per cell")
    p.add_argument("--data", type=Path, required=True, help="preprocess's output folder")
    p.add_argument("--metrics", type=Path, required=True, help="folder: metrics JSON per cell")
    p.add_argument("--eval", type=Path, required=True, help="folder: per-seed metrics and per-class reports")
    p.add_argument("--predictions", type=Path, required=True, help="folder: actual/predicted CSV per cell")
    args = p.parse_args(argv)
    params = load_params(args.params)  # a bad params file stops here too, before any output is touched
    import logging

    from annlab.train.model import configure
    from annlab.train.speed import Speed

    configure(Speed.from_env())
    # Each loaded model traces its own predict function; TensorFlow warns of "retracing" from
    # the fifth on, which is expected here.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    info = io.read_json(args.data / "dataset.json")
    # Each folder is written whole or not at all: an interrupted run leaves the previous one.
    with (
        io.atomic_path(args.metrics) as metrics_dir,
        io.atomic_path(args.eval) as eval_dir,
        io.atomic_path(args.predictions) as predictions_dir,
    ):
        for folder in (metrics_dir, eval_dir, predictions_dir):
            folder.mkdir(parents=True)
        for cell in [c.name for c in params.cells()]:
            model_dir = args.models / cell
            if not model_dir.is_dir():
                raise UserError(f"{model_dir}: missing; run `dvc repro` so cell {cell} is trained")
            result = evaluate_cell(model_dir, args.data, info["class_names"])
            summary = result["summary"]
            io.write_json(metrics_dir / f"{cell}.json", summary)
            io.write_json(eval_dir / f"{cell}.json", result["report"])
            io.write_text(predictions_dir / f"{cell}.csv", result["predictions"])
            shown = " ".join(f"{k}={v:.4f}" for k, v in summary.items() if isinstance(v, float))
            diverged = f" ({summary['diverged']} diverged)" if summary["diverged"] else ""
            print(f"evaluate: {cell}: {shown}{diverged}")


if __name__ == "__main__":
    runtime.run(main)
