"""Stage `plot`: learning curves and confusion matrix of every cell of the grid, as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from annlab import io, runtime
from annlab.params import Cell, Params, load_params
from annlab.report import figures


def curves_figure(histories: dict[int, pd.DataFrame], title: str) -> Any:
    """Accuracy and loss, training vs validation, side by side (the tutorial's figure).

    With several seeds each curve is the mean over seeds with a ±1 std band.
    """
    plt = figures.pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        for column, label in ((metric, f"training {metric}"), (f"val_{metric}", f"validation {metric}")):
            figures.plot_band(ax, figures.seed_band(histories, column), label, marker="o", ms=3)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(metric)
        ax.set_title(f"Training vs validation {metric}")
        ax.grid(alpha=0.3)
        ax.legend()
    losses = list(histories.values())
    if max(figures.largest_finite(losses, c) for c in ("loss", "val_loss")) > figures.LOG_SCALE_ABOVE:
        axes[1].set_yscale("log")
    fig.suptitle(title)
    return fig


def confusion_figure(report: dict[str, Any], title: str) -> Any:
    """The test-set confusion matrix as an annotated heatmap."""
    import numpy as np

    plt = figures.pyplot()

    cm = np.asarray(report["confusion_matrix"])
    names = report["class_names"]
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


def draw_cell(cell: Cell, params: Params, history_dir: Path, report: dict[str, Any], out: Path) -> str:
    """Save one cell's curves and confusion matrix under `out/<cell>/`; a line to print."""
    seeds = [s["seed"] for s in report["seeds"]]
    diverged = [str(s["seed"]) for s in report["seeds"] if s["diverged"]]
    title = (
        f"{cell.name} ({params.data.label}, {params.architectures()[cell.model]}"
        + (f", mean over {len(seeds)} seeds, shaded ±1 std" if len(seeds) > 1 else "")
        + ")"
        + (f", diverged: seed {', '.join(diverged)}" if diverged else "")
    )
    folder = out / cell.name
    figures.save(curves_figure(figures.read_histories(history_dir), title), folder / "curves.png")
    tested = len(seeds) - len(diverged)
    pooled = f" (test samples summed over {tested} seeds)" if tested > 1 else ""
    figures.save(
        confusion_figure(report, f"Confusion matrix: {cell.name}{pooled}"), folder / "confusion_matrix.png"
    )
    return f"plot: {cell.name} -> curves.png, confusion_matrix.png"


def main(argv: list[str] | None = None) -> None:
    """Draw every cell's learning curves (over its seeds) and test confusion matrix, the cells
    shared out over the cores (matplotlib draws on one)."""
    p = runtime.parser(__doc__)
    p.add_argument("--history", type=Path, required=True, help="train's history folders, one per cell")
    p.add_argument("--eval", type=Path, required=True, help="evaluate's report JSON per cell")
    p.add_argument("--out", type=Path, required=True, help="folder: <cell>/curves.png, confusion_matrix.png")
    args = p.parse_args(argv)
    params = load_params(args.params)
    import contextlib
    import multiprocessing
    import os
    import sys
    from concurrent.futures import ProcessPoolExecutor

    figures.pyplot()  # imported once, before the workers fork
    cells = params.cells()
    reports = [io.read_json(args.eval / f"{cell.name}.json") for cell in cells]
    n = len(cells)
    histories = [args.history / cell.name for cell in cells]
    # On `make repro`'s warm worker (a daemon process, TensorFlow's threads running) forking is
    # neither allowed nor safe: it draws in turn.
    forkable = not multiprocessing.current_process().daemon and "tensorflow" not in sys.modules
    jobs = min(n, os.cpu_count() or 1) if forkable else 1
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) if jobs > 1 else None
    with io.atomic_path(args.out) as out, pool or contextlib.nullcontext():
        draw = pool.map if pool else map
        for line in draw(draw_cell, cells, [params] * n, histories, reports, [out] * n):
            print(line)


if __name__ == "__main__":
    runtime.run(main)
