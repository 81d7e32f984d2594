"""The grid's summary figures in the report: the accuracy heatmap, the forest plot of each
cell's interval, and validation curves pooled over seeds (Matplotlib, loaded lazily)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from annlab.params import Params, cell_name
from annlab.report.figures import LOG_SCALE_ABOVE, largest_finite, plot_band, pyplot, seed_band
from annlab.report.tables import Analysis, best_cell, fmt_value


def scale_floor(values: np.ndarray, keep: np.ndarray | None = None) -> float:
    """The low end of a scale for `values` that far outliers below do not set: the smallest value
    above Tukey's lower fence (Q1 − 1.5 IQR), and never above the smallest of `keep` (the best
    cell and those tied with it stay on the scale). One failed cell then takes the colour (or
    the edge) for "below", and the differences among the others stay visible."""
    finite = values[np.isfinite(values)]
    if finite.size < 4:
        return float(finite.min()) if finite.size else 0.0
    q1, q3 = np.percentile(finite, [25, 75])
    fence = q1 - 1.5 * (q3 - q1)
    floor = float(finite[finite >= fence].min())
    kept = keep[np.isfinite(keep)] if keep is not None else np.empty(0)
    return min(floor, float(kept.min())) if kept.size else floor


def heatmap_figure(
    summary: pd.DataFrame, params: Params, metric: str, title: str, group: set[str] | None = None
) -> Any:
    """An optimizer x activation heatmap of a metric's mean per architecture (a panel each, one
    colour scale), annotated with the interval over seeds. The scale starts at `scale_floor`:
    cells below it are grey and marked "below scale". The best cell and those tied with it
    (`group`) are outlined."""
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
    every = np.concatenate([g.ravel() for g in grids.values()])
    finite = every[np.isfinite(every)]
    best = best_cell(summary)
    outlined = set(group or ()) | ({best} if best else set())
    kept = np.array([by_cell.loc[c, metric] for c in outlined], dtype=float)
    low, high = (scale_floor(every, kept), float(finite.max())) if finite.size else (0.0, 1.0)
    if high <= low:
        low, high = low - 0.005, high + 0.005
    middle = (low + high) / 2
    fig, axes = plt.subplots(
        1,
        len(labels),
        figsize=(0.6 + len(labels) * (1.2 + 1.5 * len(activations)), 1.6 + 0.9 * len(optimizers)),
        squeeze=False,
        layout="constrained",
    )
    cmap = plt.get_cmap("viridis").with_extremes(bad="white", under="lightgrey")
    below = False
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
                if np.isfinite(grid[i, j]) and grid[i, j] < low:
                    text += "\nbelow scale"
                    below = True
                dark = np.isfinite(grid[i, j]) and low <= grid[i, j] < middle
                ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
                if cell in outlined:
                    width = 3.0 if cell == best else 2.0
                    ax.add_patch(
                        plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=width)
                    )
        if len(labels) > 1:
            ax.set_title(label)
    what = metric.replace("_", " ")
    fig.colorbar(
        image, ax=axes[0].tolist(), label=f"{what}: mean over seeds", extend="min" if below else "neither"
    )
    tied = "red boxes: the best and the cells tied with it" if len(outlined) > 1 else "red box: the best cell"
    note = f"{tied}\n[ ]: 95 % interval over seeds" + ("; grey: below the colour scale" if below else "")
    fig.suptitle(f"{title}\n{note}", fontsize=9)
    return fig


def curves_figure(
    histories: dict[str, dict[int, pd.DataFrame]], params: Params, panel_label: str, title: str
) -> Any:
    """Validation accuracy and loss (a row each, per architecture), a panel per activation and a
    line per optimizer (`panel_label` "activation"), or the other way round ("optimizer").
    Seeds give a mean with a ±1 std band (the title says so)."""
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
    best and the cells tied with it in another colour, the best's interval shaded across. The
    axis spans the intervals that matter (`scale_floor`); a cell far below is drawn at the left
    edge as an arrow, with its value written."""
    plt = pyplot()
    ranked = summary[summary["test_accuracy"].notna()].sort_values("test_accuracy", kind="stable")
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.38 * max(len(ranked), 1)), layout="constrained")
    group = analysis.group if analysis.seeds > 1 else set()
    tied = ranked[ranked["cell"].isin(group | ({analysis.best} if analysis.best else set()))]
    floor = scale_floor(
        ranked["test_accuracy"].to_numpy(dtype=float), tied["test_accuracy"].to_numpy(dtype=float)
    )
    kept = ranked[ranked["test_accuracy"] >= floor]
    lows = kept["test_accuracy_low"].fillna(kept["test_accuracy"])
    highs = kept["test_accuracy_high"].fillna(kept["test_accuracy"])
    left, right = (float(lows.min()), float(highs.max())) if len(kept) else (0.0, 1.0)
    pad = max(right - left, 0.01) * 0.08
    left, right = left - pad, right + pad
    at_edge = False
    for y, (_, record) in enumerate(ranked.iterrows()):
        mean = float(record["test_accuracy"])
        low, high = record["test_accuracy_low"], record["test_accuracy_high"]
        color = "tab:red" if record["cell"] in group else "tab:gray"
        if mean < left:  # far below the rest: at the edge, with its value
            at_edge = True
            ax.plot([left], [y], "<", color=color, ms=8, clip_on=False)
            shown = f"{mean:.3f}" + ("" if pd.isna(low) else f" [{low:.3f}, {high:.3f}]")
            ax.annotate(shown, (left, y), xytext=(8, 0), textcoords="offset points", va="center", fontsize=8)
            continue
        if not pd.isna(low):
            ax.plot([max(low, left), min(high, right)], [y, y], color=color, lw=2.5, solid_capstyle="butt")
        ax.plot([mean], [y], "o", color=color, ms=6)
    if analysis.best is not None:
        best = summary.set_index("cell").loc[analysis.best]
        if not pd.isna(best["test_accuracy_low"]):
            ax.axvspan(best["test_accuracy_low"], best["test_accuracy_high"], color="tab:red", alpha=0.08)
    ax.set_xlim(left, right)
    ax.set_yticks(range(len(ranked)), list(ranked["cell"]))
    ax.set_xlabel("test accuracy: mean over seeds, 95 % interval")
    ax.grid(axis="x", alpha=0.3)
    label = "red: the best and the cells tied with it" if group else "one seed: no intervals, no ties tested"
    if at_edge:
        label += "; ◀ at the edge: far below the others, value written"
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
