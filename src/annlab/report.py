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
from annlab.params import Params, cell_name

ROW_COLUMNS = [
    "cell",
    "model",
    "optimizer",
    "activation",
    "seed",
    "diverged",
    "diverged_epoch",
    *SEED_METRICS,
    "n_test",
    "n_params",
]
INT_COLUMNS = ["seed", "diverged_epoch", "best_epoch", "epochs_run", "n_test", "n_params"]
TIMING_COLUMNS = [
    "cell",
    "model",
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
    for column in ROW_COLUMNS[5:]:
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
            **{k: group[k].iloc[0] for k in ("model", "optimizer", "activation", "n_params")},
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


def pivot_table(summary: pd.DataFrame, params: Params, pivot: Pivot, model: str) -> str:
    """A Markdown table of one architecture's cells, optimizers as rows and activations as
    columns; its best value in bold."""
    cells = summary[summary["model"] == model]
    best = None
    values = shown(cells[pivot.metric], pivot.digits)
    if pivot.higher_is_better is not None and values.notna().any():
        best = values.max() if pivot.higher_is_better else values.min()
    by_cell = cells.set_index("cell")
    table = []
    for optimizer in params.grid.optimizer:
        row = {"optimizer": optimizer}
        for activation in params.grid.activation:
            record = by_cell.loc[cell_name(model, optimizer, activation)]
            text = fmt_value(record, pivot.metric, pivot.digits)
            is_best = best is not None and round(float(record[pivot.metric]), pivot.digits) == best
            row[activation] = f"**{text}**" if is_best else text
        table.append(row)
    return pd.DataFrame(table).to_markdown(index=False, disable_numparse=True)


def pivot_section(summary: pd.DataFrame, params: Params, pivot: Pivot) -> list[str]:
    """A metric's optimizer x activation table, one per architecture of the grid."""
    labels = params.architectures()
    if len(labels) == 1:
        return [pivot_table(summary, params, pivot, params.grid.model[0])]
    parts: list[str] = []
    for model, label in labels.items():
        parts += [f"### {label}", "", pivot_table(summary, params, pivot, model), ""]
    return parts[:-1]


def architectures_table(summary: pd.DataFrame, params: Params) -> str:
    """Architectures as rows, optimizers as columns: the best test accuracy over activations
    (ranked as the leaderboard ranks), with that activation; and the parameter count."""
    labels = params.architectures()
    table = []
    for model, label in labels.items():
        cells = summary[summary["model"] == model]
        row = {"architecture": label, "parameters": f"{int(cells['n_params'].iloc[0]):,}"}
        for optimizer in params.grid.optimizer:
            ranked = leaderboard_order(cells[cells["optimizer"] == optimizer])
            best = ranked.iloc[0]
            text = fmt_value(best, "test_accuracy", 4)
            row[optimizer] = text if pd.isna(best["test_accuracy"]) else f"{text} ({best['activation']})"
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
    data, train = params.data, params.train
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
    question = (
        "Which optimizer and activation train this network best?"
        if len(params.grid.model) == 1
        else "Which architecture, optimizer and activation train best?"
    )
    return "\n".join(
        [
            f"# {question} ({data.dataset})",
            "",
            f"- **Dataset**: {data.dataset}, split {train_pct}/{round(100 * data.val_size)}/"
            f"{round(100 * data.test_size)} % train/validation/test with seed {params.seed}"
            f" ({int(rows['n_test'].iloc[0])} test samples), scaler {data.scaler}"
            + (f", stratified subset of {data.subset}" if data.subset else ""),
            f"- **{'Model' if len(params.grid.model) == 1 else 'Models'}**: {models_text(params)};"
            f" softmax output, loss {train.loss}",
            f"- **Training**: {train.epochs} epochs, batch {train.batch_size}; {hyper}",
            f"- **Seeds**: {seed_text}",
            f"- **Code**: git commit `{commit}`; grid id `{params.grid_id()}` (the MLflow parent run's"
            " `annlab.grid` tag)",
        ]
    )


def models_text(params: Params) -> str:
    """The grid's networks, e.g. `cnn 64-128 / 64-32 (filters / dense units, kernel 3, pool 2)`."""
    model = params.model
    what = {
        "ann": "dense units",
        "cnn": f"conv filters / dense units, kernel {model.cnn.kernel_size}, pool {model.cnn.pool_size}",
        "rnn": "SimpleRNN units / dense units, image rows as time steps",
        "lstm": "LSTM units / dense units, image rows as time steps",
    }
    texts = []
    for name, label in params.architectures().items():
        dropout = getattr(model, name).dropout
        texts.append(f"{label} ({what[name]}" + (f", dropout {dropout}" if dropout else "") + ")")
    return "; ".join(texts)


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
            f" macro F1 {fmt_value(record, 'macro_f1', 4)}). "
            + (
                "Best values are in bold."
                if len(params.grid.model) == 1
                else "Each architecture's best is in bold."
            )
        )
    parts += [
        "",
        "## Architectures",
        "",
        "Best mean test accuracy over the activations, per optimizer (ranked as the leaderboard"
        " ranks), with the activation that reached it; and each network's parameter count.",
        "",
        architectures_table(summary, params),
    ]
    for pivot in PIVOTS:
        parts += ["", f"## {pivot.title}", "", *pivot_section(summary, params, pivot)]
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
    """Seconds of `fit` per architecture and per cell (mean over seeds): wall clock, so it
    differs between runs."""
    by_model = timings.groupby("model", sort=False)[["train_seconds", "seconds_per_epoch"]].mean()
    labels = params.architectures()
    overview = [
        {
            "architecture": labels[model],
            "mean seconds per run": f"{by_model.loc[model, 'train_seconds']:.1f}",
            "seconds per epoch": f"{by_model.loc[model, 'seconds_per_epoch']:.3f}",
        }
        for model in labels
    ]
    means = timings.groupby("cell", sort=False)[["train_seconds", "seconds_per_epoch"]].mean()
    parts = [
        "Wall-clock seconds in `fit` (mean over seeds; seconds per epoch in brackets), measured on the"
        " machine that ran the stage. Timings vary between runs, so they are kept in this last"
        " section and in `timings.csv`, apart from the tables above, which reproduce exactly.",
        "",
        pd.DataFrame(overview).to_markdown(index=False, disable_numparse=True),
    ]
    for model, label in labels.items():
        table = []
        for optimizer in params.grid.optimizer:
            row = {"optimizer": optimizer}
            for activation in params.grid.activation:
                cell = means.loc[cell_name(model, optimizer, activation)]
                row[activation] = f"{cell['train_seconds']:.1f} s ({cell['seconds_per_epoch']:.2f} s/epoch)"
            table.append(row)
        heading = [] if len(labels) == 1 else [f"### {label}", ""]
        parts += ["", *heading, pd.DataFrame(table).to_markdown(index=False, disable_numparse=True)]
    total = timings["train_seconds"].sum()
    parts += ["", f"Total training time: {total:.1f} s over {len(timings)} runs."]
    return "\n".join(parts)


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
    # Per architecture (`dvc metrics show` flattens it to by_model.<model>.best_test_accuracy).
    by_model: dict[str, Any] = {}
    for model, cells in summary.groupby("model", sort=False):
        model_best = best_cell(cells)
        entry: dict[str, Any] = {"best_cell": model_best, "n_params": int(cells["n_params"].iloc[0])}
        if model_best is not None:
            entry["best_test_accuracy"] = float(cells.set_index("cell").loc[model_best, "test_accuracy"])
        by_model[str(model)] = entry
    out["by_model"] = by_model
    return out


def _or_none(value: float) -> float | None:
    return None if pd.isna(value) else float(value)


def heatmap_figure(summary: pd.DataFrame, params: Params, metric: str, title: str) -> Any:
    """An optimizer x activation heatmap of a metric's mean per architecture (a panel each, one
    colour scale), annotated (± std), the grid's best cell outlined."""
    plt = figures.pyplot()
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
                text = fmt_value(by_cell.loc[cell], metric, 3).replace(" ± ", "\n± ").replace(" (", "\n(")
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
    plt = figures.pyplot()
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
    log_loss = figures.largest_finite(every, "val_loss") > figures.LOG_SCALE_ABOVE
    for r, (model, label) in enumerate(labels.items()):
        for j, panel in enumerate(panels):
            for i, metric in enumerate(("val_accuracy", "val_loss")):
                ax = axes[2 * r + i][j]
                for k, line in enumerate(lines):
                    band = figures.seed_band(histories[cell_of(model, panel, line)], metric)
                    style = {"color": colors(k % 10), "marker": "o", "ms": 2.5}
                    figures.plot_band(ax, band, f"{line_label} {line}", **style)
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
