"""The comparison report of a grid, from DVC outputs: per-seed rows, per-cell summaries with
mean ± std, pivot tables, a leaderboard and figures. Pure functions; the `report` stage
reads and writes the files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from annlab import figures
from annlab.metrics import SEED_METRICS, mean_std
from annlab.params import Params

ROW_COLUMNS = [
    "cell",
    "optimizer",
    "activation",
    "seed",
    "diverged",
    "diverged_epoch",
    *SEED_METRICS,
    "n_test",
]
INT_COLUMNS = ["seed", "diverged_epoch", "best_epoch", "epochs_run", "n_test"]
TIMING_COLUMNS = [
    "cell",
    "optimizer",
    "activation",
    "seed",
    "train_seconds",
    "seconds_per_epoch",
    "epochs_run",
]
# Marks the start of the one section whose content changes from run to run.
TIMING_HEADING = "## Training time"


@dataclass(frozen=True)
class Pivot:
    """One optimizer x activation table of the report."""

    metric: str
    title: str
    higher_is_better: bool | None  # None: no best to mark
    digits: int


PIVOTS = [
    Pivot("test_accuracy", "Test accuracy", True, 4),
    Pivot("macro_f1", "Macro F1 (test)", True, 4),
    Pivot("test_loss", "Test loss", False, 4),
    Pivot("best_val_accuracy", "Best validation accuracy", True, 4),
    Pivot("best_epoch", "Epoch of the best validation accuracy", None, 1),
]


def rows_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Per-seed records as the table the report works on: whole numbers stay whole where a
    value is missing (a diverged seed), the rest are floats (NaN for missing)."""
    frame = pd.DataFrame(records, columns=ROW_COLUMNS)
    for column in ROW_COLUMNS[4:]:
        if column in INT_COLUMNS:
            frame[column] = frame[column].astype("Int64")
        elif column == "diverged":
            frame[column] = frame[column].astype(bool)
        else:
            frame[column] = pd.to_numeric(frame[column]).astype(float)
    return frame


def rows_csv(rows: pd.DataFrame) -> str:
    """comparison.csv: one row per cell and seed, every metric at full precision."""
    return rows.to_csv(index=False, lineterminator="\n")


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: mean and sample std over its seeds that did not diverge.

    `seeds` and `diverged` count the cell's seeds; a metric is NaN when every seed diverged.
    """
    out = []
    for cell, group in rows.groupby("cell", sort=False):
        converged = group[~group["diverged"].astype(bool)]
        record: dict[str, Any] = {
            "cell": cell,
            "optimizer": group["optimizer"].iloc[0],
            "activation": group["activation"].iloc[0],
            "seeds": len(group),
            "diverged": int(group["diverged"].astype(bool).sum()),
            "diverged_epoch": group["diverged_epoch"].min(),
        }
        for metric in SEED_METRICS:
            values = [None if pd.isna(v) else float(v) for v in converged[metric]]
            mean, std = mean_std(values)
            record[metric] = np.nan if mean is None else mean
            record[f"{metric}_std"] = np.nan if std is None else std
        out.append(record)
    return pd.DataFrame(out)


def best_cell(summary: pd.DataFrame) -> str | None:
    """The first cell of the leaderboard; None when every cell diverged."""
    ranked = leaderboard_order(summary)
    ranked = ranked[ranked["test_accuracy"].notna()]
    return None if ranked.empty else str(ranked["cell"].iloc[0])


def leaderboard_order(summary: pd.DataFrame) -> pd.DataFrame:
    """Cells best first: cells none of whose seeds diverged, then by the share of diverged
    seeds (a lucky survivor does not beat a stable cell); within that, higher mean test
    accuracy, then macro F1, then lower test loss, each as shown (4 decimals, so two cells
    that read the same are not ranked by float noise), then grid order."""
    keyed = summary.assign(
        _order=range(len(summary)),
        _unstable=summary["diverged"] / summary["seeds"],
        _acc=-shown(summary["test_accuracy"]).fillna(-np.inf),
        _f1=-shown(summary["macro_f1"]).fillna(-np.inf),
        _loss=shown(summary["test_loss"]).fillna(np.inf),
    )
    ranked = keyed.sort_values(["_unstable", "_acc", "_f1", "_loss", "_order"], kind="stable")
    return ranked.drop(columns=["_order", "_unstable", "_acc", "_f1", "_loss"]).reset_index(drop=True)


def shown(values: pd.Series, digits: int = 4) -> pd.Series:
    """Values at the precision the tables show them, for ranking and marking the best."""
    return values.astype(float).round(digits)


def fmt_value(record: pd.Series, metric: str, digits: int) -> str:
    """A cell's value as text: `0.9694`, `0.9611 ± 0.0042`, `diverged (epoch 4)`, with a note
    when some of its seeds diverged."""
    seeds, diverged = int(record["seeds"]), int(record["diverged"])
    if pd.isna(record[metric]):
        if diverged == seeds:
            if seeds == 1 and not pd.isna(record["diverged_epoch"]):
                return f"diverged (epoch {int(record['diverged_epoch'])})"
            return f"diverged ({diverged}/{seeds})"
        return "n/a"
    single = pd.isna(record[f"{metric}_std"])
    if single and float(record[metric]).is_integer() and metric in INT_COLUMNS:
        digits = 0  # one seed's epoch is a whole number
    text = f"{record[metric]:.{digits}f}"
    if not single:
        text += f" ± {record[f'{metric}_std']:.{digits}f}"
    if diverged:
        text += f" ({diverged}/{seeds} diverged)"
    return text


def pivot_table(summary: pd.DataFrame, params: Params, pivot: Pivot) -> str:
    """A Markdown table, optimizers as rows and activations as columns; the best value in bold."""
    best = None
    values = shown(summary[pivot.metric], pivot.digits)
    if pivot.higher_is_better is not None and values.notna().any():
        best = values.max() if pivot.higher_is_better else values.min()
    by_cell = summary.set_index("cell")
    table = []
    for optimizer in params.grid.optimizer:
        row = {"optimizer": optimizer}
        for activation in params.grid.activation:
            record = by_cell.loc[f"{optimizer}-{activation}"]
            text = fmt_value(record, pivot.metric, pivot.digits)
            is_best = best is not None and round(float(record[pivot.metric]), pivot.digits) == best
            row[activation] = f"**{text}**" if is_best else text
        table.append(row)
    return pd.DataFrame(table).to_markdown(index=False, disable_numparse=True)


def leaderboard(summary: pd.DataFrame) -> str:
    """Every cell ranked, as a Markdown table."""
    table = []
    for rank, (_, record) in enumerate(leaderboard_order(summary).iterrows(), start=1):
        table.append(
            {
                "rank": str(rank),
                "cell": record["cell"],
                "test accuracy": fmt_value(record, "test_accuracy", 4),
                "macro F1": fmt_value(record, "macro_f1", 4),
                "test loss": fmt_value(record, "test_loss", 4),
                "best val accuracy": fmt_value(record, "best_val_accuracy", 4),
                "at epoch": fmt_value(record, "best_epoch", 1),
                "seeds": str(int(record["seeds"])),
                "diverged": str(int(record["diverged"])),
            }
        )
    return pd.DataFrame(table).to_markdown(index=False, disable_numparse=True)


def header(params: Params, rows: pd.DataFrame, commit: str) -> str:
    """What was compared: dataset, model, training, seeds, code version and grid id."""
    data, model, train = params.data, params.model, params.train
    seeds = params.seeds
    train_pct = round(100 * (1 - data.test_size - data.val_size))
    hyper = "; ".join(
        f"{name} " + ", ".join(f"{k} {v}" for k, v in getattr(params.optimizers, name).model_dump().items())
        for name in params.grid.optimizer
    )
    seed_text = (
        f"one training seed ({seeds[0]})"
        if len(seeds) == 1
        else f"{len(seeds)} training seeds ({', '.join(map(str, seeds))});"
        " values are mean ± sample std over seeds"
    )
    return "\n".join(
        [
            f"# Which optimizer and activation train this network best? ({data.dataset})",
            "",
            f"- **Dataset**: {data.dataset}, split {train_pct}/{round(100 * data.val_size)}/"
            f"{round(100 * data.test_size)} % train/validation/test with seed {params.seed}"
            f" ({int(rows['n_test'].iloc[0])} test samples), scaler {data.scaler}"
            + (f", stratified subset of {data.subset}" if data.subset else ""),
            f"- **Model**: {model.label} with a softmax output, loss {train.loss}",
            f"- **Training**: {train.epochs} epochs, batch {train.batch_size}; {hyper}",
            f"- **Seeds**: {seed_text}",
            f"- **Code**: git commit `{commit}`; grid id `{params.grid_id()}` (the MLflow parent run's"
            " `annlab.grid` tag)",
        ]
    )


def comparison_markdown(
    params: Params, rows: pd.DataFrame, timings: pd.DataFrame, commit: str, figures: dict[str, str]
) -> str:
    """The whole report. Everything above the training-time section reproduces exactly."""
    summary = summarize(rows)
    best = best_cell(summary)
    parts = [header(params, rows, commit), ""]
    if best is None:
        parts.append("**Every cell diverged**; see below.")
    else:
        record = summary.set_index("cell").loc[best]
        parts.append(
            f"**Best cell: {best}** (test accuracy {fmt_value(record, 'test_accuracy', 4)},"
            f" macro F1 {fmt_value(record, 'macro_f1', 4)}). Best values are in bold."
        )
    for pivot in PIVOTS:
        parts += ["", f"## {pivot.title}", "", pivot_table(summary, params, pivot)]
    parts += ["", "## Leaderboard", "", leaderboard(summary)]

    diverged = rows[rows["diverged"].astype(bool)]
    parts += ["", "## Diverged runs", ""]
    if diverged.empty:
        parts.append("None: every loss stayed finite.")
    else:
        parts.append(
            "Training stops at the first epoch whose loss is NaN or infinite; such a run has no test"
            " metrics and is left out of its cell's mean."
        )
        parts.append("")
        for _, row in diverged.iterrows():
            parts.append(
                f"- {row['cell']} seed {row['seed']}: loss not finite at epoch {int(row['diverged_epoch'])}"
            )

    if figures:
        parts += ["", "## Figures", ""]
        parts += [f"![{title}]({path})" for title, path in figures.items()]

    parts += ["", TIMING_HEADING, "", timing_section(params, timings)]
    return "\n".join(parts) + "\n"


def timing_section(params: Params, timings: pd.DataFrame) -> str:
    """Seconds of `fit` per cell (mean over seeds): wall clock, so it differs between runs."""
    means = timings.groupby("cell", sort=False)[["train_seconds", "seconds_per_epoch"]].mean()
    table = []
    for optimizer in params.grid.optimizer:
        row = {"optimizer": optimizer}
        for activation in params.grid.activation:
            cell = means.loc[f"{optimizer}-{activation}"]
            row[activation] = f"{cell['train_seconds']:.1f} s ({cell['seconds_per_epoch']:.2f} s/epoch)"
        table.append(row)
    total = timings["train_seconds"].sum()
    return "\n".join(
        [
            "Wall-clock seconds in `fit` per cell (mean over seeds; seconds per epoch in brackets),"
            " measured on the machine that ran the stage. Timings vary between runs, so they are kept"
            " in this last section and in `timings.csv`, apart from the tables above, which reproduce"
            " exactly.",
            "",
            pd.DataFrame(table).to_markdown(index=False, disable_numparse=True),
            "",
            f"Total training time: {total:.1f} s over {len(timings)} runs.",
        ]
    )


def summary_metrics(rows: pd.DataFrame) -> dict[str, Any]:
    """The grid's headline numbers, for `dvc metrics show` and `dvc exp show`."""
    summary = summarize(rows)
    best = best_cell(summary)
    out: dict[str, Any] = {
        "cells": len(summary),
        "runs": len(rows),
        "diverged_runs": int(rows["diverged"].astype(bool).sum()),
        "best_cell": best,
        # over the cells that have a test accuracy (not every seed diverged)
        "mean_test_accuracy": _or_none(summary["test_accuracy"].mean()),
        "tested_cells": int(summary["test_accuracy"].notna().sum()),
    }
    if best is not None:
        record = summary.set_index("cell").loc[best]
        out["best_test_accuracy"] = float(record["test_accuracy"])
        out["best_macro_f1"] = float(record["macro_f1"])
    return out


def _or_none(value: float) -> float | None:
    return None if pd.isna(value) else float(value)


def heatmap_figure(summary: pd.DataFrame, params: Params, metric: str, title: str) -> Any:
    """An optimizer x activation heatmap of a metric's mean, annotated (± std), best outlined."""
    plt = figures.pyplot()
    by_cell = summary.set_index("cell")
    optimizers, activations = params.grid.optimizer, params.grid.activation
    grid = np.array([[by_cell.loc[f"{o}-{a}", metric] for a in activations] for o in optimizers], dtype=float)
    fig, ax = plt.subplots(
        figsize=(1.6 + 1.5 * len(activations), 1.2 + 0.9 * len(optimizers)), layout="constrained"
    )
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
    fig.colorbar(image, ax=ax, label=metric)
    ax.set_xticks(range(len(activations)), activations)
    ax.set_yticks(range(len(optimizers)), optimizers)
    ax.set_xlabel("activation")
    ax.set_ylabel("optimizer")
    finite = grid[np.isfinite(grid)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    best = best_cell(summary)
    for i, optimizer in enumerate(optimizers):
        for j, activation in enumerate(activations):
            record = by_cell.loc[f"{optimizer}-{activation}"]
            text = fmt_value(record, metric, 3).replace(" ± ", "\n± ").replace(" (", "\n(")
            dark = np.isfinite(grid[i, j]) and grid[i, j] < middle
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
            if f"{optimizer}-{activation}" == best:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5))
    ax.set_title(title)
    return fig


def curves_figure(
    histories: dict[str, dict[int, pd.DataFrame]],
    panels: list[str],
    lines: list[str],
    cell_of: Any,
    panel_label: str,
    line_label: str,
    title: str,
) -> Any:
    """Validation accuracy (top) and loss (bottom), one panel per `panels` value, one line per
    `lines` value; `cell_of(panel, line)` names the cell. Seeds give a mean with a ±1 std band."""
    plt = figures.pyplot()
    fig, axes = plt.subplots(
        2, len(panels), figsize=(1 + 4 * len(panels), 7), squeeze=False, sharex=True, layout="constrained"
    )
    colors = plt.get_cmap("tab10")
    for j, panel in enumerate(panels):
        for i, metric in enumerate(("val_accuracy", "val_loss")):
            ax = axes[i][j]
            for k, line in enumerate(lines):
                band = figures.seed_band(histories[cell_of(panel, line)], metric)
                figures.plot_band(ax, band, f"{line_label} {line}", color=colors(k % 10), marker="o", ms=2.5)
            ax.set_title(f"{panel_label} {panel}")
            ax.set_ylabel(metric.replace("_", " ").replace("val", "validation"))
            ax.grid(alpha=0.3)
            if metric == "val_loss":
                ax.set_xlabel("epoch")
                ax.xaxis.get_major_locator().set_params(integer=True)
                every = [h for cell in histories.values() for h in cell.values()]
                if figures.largest_finite(every, "val_loss") > figures.LOG_SCALE_ABOVE:
                    ax.set_yscale("log")
        axes[0][j].legend(fontsize=8)
    fig.suptitle(title)
    return fig
