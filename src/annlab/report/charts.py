"""The grid's summary figures in the report: the accuracy heatmap, the forest plot of each
cell's interval, and validation curves pooled over seeds (Matplotlib, loaded lazily)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from annlab.params import Params, cell_name
from annlab.report.figures import LOG_SCALE_ABOVE, largest_finite, plot_band, pyplot, seed_band
from annlab.report.tables import Analysis, best_cell, fmt_value


def heatmap_figure(summary: pd.DataFrame, params: Params, metric: str, title: str) -> Any:
    """An optimizer x activation heatmap of a metric's mean per architecture (a panel each, one
    colour scale), annotated with the interval over seeds, the grid's best cell outlined."""
    # Imported here: tables pulls in scipy, which the plot stage (a user of this module) does not need.
    plt = pyplot()
    by_cell = summary.set_index("cell")
    optimizers, activations = params.grid.optimizer, params.grid.activation
    labels = params.architectures()
    grids = {
        model: np.array(
            [[by_cell.loc[cell_name(model, o, a), metric] for a in activations] for o in optimizers],
            dtype=float,
        )
        for model in labels
    }
    finite = np.concatenate([g[np.isfinite(g)] for g in grids.values()])
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    middle = (low + high) / 2
    fig, axes = plt.subplots(
        1,
        len(labels),
        figsize=(0.6 + len(labels) * (1.2 + 1.5 * len(activations)), 1.4 + 0.9 * len(optimizers)),
        squeeze=False,
        layout="constrained",
    )
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    best = best_cell(summary)
    for ax, (model, label) in zip(axes[0], labels.items(), strict=True):
        grid = grids[model]
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto", vmin=low, vmax=high)
        ax.set_xticks(range(len(activations)), activations)
        ax.set_yticks(range(len(optimizers)), optimizers)
        ax.set_xlabel("activation")
        ax.set_ylabel("optimizer")
        for i, optimizer in enumerate(optimizers):
            for j, activation in enumerate(activations):
                cell = cell_name(model, optimizer, activation)
                text = fmt_value(by_cell.loc[cell], metric, 3).replace(" [", "\n[").replace(" (", "\n(")
                dark = np.isfinite(grid[i, j]) and grid[i, j] < middle
                ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
                if cell == best:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5))
        if len(labels) > 1:
            ax.set_title(label)
    fig.colorbar(image, ax=axes[0].tolist(), label=metric)
    fig.suptitle(title)
    return fig


def curves_figure(
    histories: dict[str, dict[int, pd.DataFrame]], params: Params, panel_label: str, title: str
) -> Any:
    """Validation accuracy and loss (a row each, per architecture), a panel per activation and a
    line per optimizer (`panel_label` "activation"), or the other way round ("optimizer").
    Seeds give a mean with a ±1 std band."""
    plt = pyplot()
    labels = params.architectures()
    by_activation = panel_label == "activation"
    grid = params.grid
    panels, lines = (grid.activation, grid.optimizer) if by_activation else (grid.optimizer, grid.activation)
    line_label = "optimizer" if by_activation else "activation"

    def cell_of(model: str, panel: str, line: str) -> str:
        return cell_name(model, line, panel) if by_activation else cell_name(model, panel, line)

    fig, axes = plt.subplots(
        2 * len(labels),
        len(panels),
        figsize=(1 + 4 * len(panels), 0.5 + 3.25 * 2 * len(labels)),
        squeeze=False,
        sharex=True,
        layout="constrained",
    )
    colors = plt.get_cmap("tab10")
    every = [h for cell in histories.values() for h in cell.values()]
    log_loss = largest_finite(every, "val_loss") > LOG_SCALE_ABOVE
    for r, (model, label) in enumerate(labels.items()):
        for j, panel in enumerate(panels):
            for i, metric in enumerate(("val_accuracy", "val_loss")):
                ax = axes[2 * r + i][j]
                for k, line in enumerate(lines):
                    band = seed_band(histories[cell_of(model, panel, line)], metric)
                    style = {"color": colors(k % 10), "marker": "o", "ms": 2.5}
                    plot_band(ax, band, f"{line_label} {line}", **style)
                where = f"{panel_label} {panel}"
                ax.set_title(where if len(labels) == 1 else f"{label}: {where}")
                ax.set_ylabel(metric.replace("_", " ").replace("val", "validation"))
                ax.grid(alpha=0.3)
                if metric == "val_loss" and log_loss:
                    ax.set_yscale("log")
            axes[2 * r][j].legend(fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    return fig


def forest_figure(summary: pd.DataFrame, analysis: Analysis, title: str) -> Any:
    """Cells sorted by mean test accuracy, one 95 % interval bar each (a dot for one seed), the
    best and the cells tied with it in another colour, the best's interval shaded across."""
    plt = pyplot()
    ranked = summary[summary["test_accuracy"].notna()].sort_values("test_accuracy", kind="stable")
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.38 * max(len(ranked), 1)), layout="constrained")
    group = analysis.group if analysis.seeds > 1 else set()
    for y, (_, record) in enumerate(ranked.iterrows()):
        mean = float(record["test_accuracy"])
        low, high = record["test_accuracy_low"], record["test_accuracy_high"]
        color = "tab:red" if record["cell"] in group else "tab:gray"
        if not pd.isna(low):
            ax.plot([low, high], [y, y], color=color, lw=2.5, solid_capstyle="butt")
        ax.plot([mean], [y], "o", color=color, ms=6)
    if analysis.best is not None:
        best = summary.set_index("cell").loc[analysis.best]
        if not pd.isna(best["test_accuracy_low"]):
            ax.axvspan(best["test_accuracy_low"], best["test_accuracy_high"], color="tab:red", alpha=0.08)
    ax.set_yticks(range(len(ranked)), list(ranked["cell"]))
    ax.set_xlabel("test accuracy: mean over seeds, 95 % interval")
    ax.grid(axis="x", alpha=0.3)
    label = "red: the best and the cells tied with it" if group else "one seed: no intervals, no ties tested"
    ax.set_title(f"{title}\n{label}", fontsize=10)
    return fig


def learning_rate_figure(trials: pd.DataFrame, params: Params, title: str) -> Any:
    """Validation accuracy (tuning seed, at each trial's checkpoint) against learning rate on a
    log axis: one panel per optimizer, a line per activation (and architecture), the chosen rate
    ringed, the optimizer's default as a dashed line; a diverged trial as an x at the bottom."""
    plt = pyplot()
    optimizers = [o for o in params.grid.optimizer if o in set(trials["optimizer"])]
    fig, axes = plt.subplots(
        1,
        max(len(optimizers), 1),
        figsize=(4.2 * max(len(optimizers), 1), 3.8),
        squeeze=False,
        layout="constrained",
    )
    colors = plt.get_cmap("tab10")
    several = len(params.grid.model) > 1
    for ax, optimizer in zip(axes[0], optimizers, strict=False):
        mine = trials[trials["optimizer"] == optimizer]
        for i, (_, group) in enumerate(mine.groupby("cell", sort=False)):
            first = group.iloc[0]
            label = f"{first['model']} {first['activation']}" if several else str(first["activation"])
            ok = group[~group["diverged"].astype(bool)]
            ax.plot(ok["learning_rate"], ok["val_accuracy"], "o-", color=colors(i % 10), label=label, ms=4)
            chosen = group[group["chosen"]]
            if not chosen.empty and not bool(chosen["diverged"].iloc[0]):
                ax.plot(chosen["learning_rate"], chosen["val_accuracy"], "o", ms=11, mfc="none",
                        mec=colors(i % 10), mew=2)  # fmt: skip
            gone = group[group["diverged"].astype(bool)]
            if not gone.empty:
                ax.plot(gone["learning_rate"], [0.0] * len(gone), "x", color=colors(i % 10), ms=7)
        ax.axvline(float(getattr(params.optimizers, optimizer).learning_rate), color="gray", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_ylim(0.0, 1.02)
        ax.set_title(optimizer)
        ax.set_xlabel("learning rate (log scale)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy at the checkpoint")
    if optimizers:
        axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle(
        f"{title}\nringed: the rate chosen; dashed: the optimizer's default; x: diverged", fontsize=10
    )
    return fig
