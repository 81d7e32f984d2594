"""Stage `plot@<optimizer>-<activation>`: learning curves and confusion matrix of one cell, as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from annlab import cli, io
from annlab.params import load_params


def _pyplot() -> Any:
    """Matplotlib's pyplot on the file-only Agg backend (stages have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_figure(history: pd.DataFrame, title: str) -> Any:
    """Accuracy and loss, training vs validation, side by side (the tutorial's figure)."""
    plt = _pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        ax.plot(history["epoch"], history[metric], marker="o", ms=3, label=f"training {metric}")
        ax.plot(history["epoch"], history[f"val_{metric}"], marker="o", ms=3, label=f"validation {metric}")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(metric)
        ax.set_title(f"Training vs validation {metric}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return fig


def confusion_figure(report: dict[str, Any], title: str) -> Any:
    """The test-set confusion matrix as an annotated heatmap."""
    import numpy as np

    plt = _pyplot()

    cm = np.asarray(report["confusion_matrix"])
    names = [c["class"] for c in report["classes"]]
    fig, ax = plt.subplots(figsize=(6.4, 5.6), layout="constrained")
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ticks = range(len(names))
    ax.set_xticks(ticks, names, rotation=45 if max(map(len, names)) > 2 else 0, ha="right")
    ax.set_yticks(ticks, names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    threshold = cm.max() / 2 if cm.size else 0
    for (i, j), count in np.ndenumerate(cm):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if count > threshold else "black")  # fmt: skip
    ax.set_title(title)
    return fig


def save(fig: Any, path: Path) -> None:
    """Save a figure atomically, with no timestamp in the PNG so reruns give the same bytes."""
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    _pyplot().close(fig)


def main(argv: list[str] | None = None) -> None:
    """Draw the cell's figures and attach them (with history and report) to its MLflow run."""
    p = cli.parser(__doc__)
    p.add_argument("--model-dir", type=Path, required=True, help="train's output folder (meta.json)")
    p.add_argument("--history", type=Path, required=True)
    p.add_argument("--report", type=Path, required=True)
    p.add_argument("--curves", type=Path, required=True, help="learning-curves PNG")
    p.add_argument("--confusion", type=Path, required=True, help="confusion-matrix PNG")
    args = p.parse_args(argv)
    params = load_params(args.params)
    meta = io.read_json(args.model_dir / "meta.json")
    title = f"{meta['cell']} ({meta['dataset']}, {meta['model']})"

    save(curves_figure(pd.read_csv(args.history), title), args.curves)
    save(confusion_figure(io.read_json(args.report), f"Confusion matrix: {title}"), args.confusion)

    import mlflow

    from annlab import tracking

    exp_id = tracking.experiment_id(params.mlflow.experiment)
    tags = tracking.stage_tag(f"plot@{meta['cell']}")
    with tracking.resume_cell_run(exp_id, meta["run_key"], meta["cell"], tags):
        mlflow.log_artifact(str(args.curves), artifact_path="plots")
        mlflow.log_artifact(str(args.confusion), artifact_path="plots")
    print(f"plot: {meta['cell']} -> {args.curves}, {args.confusion}")


if __name__ == "__main__":
    cli.run(main)
