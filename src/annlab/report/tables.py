"""Statistics and tables of the comparison report: per-seed rows, per-cell summaries with 95 %
intervals over seeds, which cells are tied with the best (`annlab.report.confidence`), pivot
tables, the leaderboard and the headline metrics. Pure functions; the `report` stage reads and
writes the files."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from annlab.params import Params, cell_name
from annlab.report import confidence as conf
from annlab.report.metrics import SEED_METRICS, mean_std

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
    # the learning rate the run trained at, and the checkpoint it is evaluated with: its epoch
    # and validation accuracy there (what every choice is made on)
    "learning_rate",
    "checkpoint_epoch",
    "val_accuracy",
]
INT_COLUMNS = ["seed", "diverged_epoch", "best_epoch", "epochs_run", "n_test", "n_params", "checkpoint_epoch"]
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
# The grid's factors: a row's column and how the report names it.
FACTORS = {"model": "architecture", "optimizer": "optimizer", "activation": "activation"}


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
            # the diverged seeds' (a run that diverged late but kept its best epoch is not one)
            "diverged_epoch": group[group["diverged"].astype(bool)]["diverged_epoch"].min(),
        }
        for metric in SEED_METRICS:
            values = [None if pd.isna(v) else float(v) for v in converged[metric]]
            mean, std = mean_std(values)
            record[metric] = np.nan if mean is None else mean
            record[f"{metric}_std"] = np.nan if std is None else std
            proportion = "accuracy" in metric or metric.startswith(("macro_", "weighted_"))
            bounds = conf.PROPORTION if proportion else (0.0, math.inf)  # losses
            if metric in INT_COLUMNS:  # an epoch lies between the first and the last one run
                bounds = (1.0, float(group["epochs_run"].max()))
            interval = conf.t_interval(values, bounds=bounds)  # type: ignore[arg-type]
            two = interval is not None and interval.n > 1
            record[f"{metric}_low"] = interval.low if two else np.nan  # type: ignore[union-attr]
            record[f"{metric}_high"] = interval.high if two else np.nan  # type: ignore[union-attr]
        out.append(record)
    return pd.DataFrame(out)


def accuracy_by_seed(rows: pd.DataFrame) -> dict[str, dict[int, float | None]]:
    """Each cell's test accuracy per seed (None for a diverged run), cells in grid order."""
    out: dict[str, dict[int, float | None]] = {}
    for _, row in rows.iterrows():
        value = row["test_accuracy"]
        out.setdefault(str(row["cell"]), {})[int(row["seed"])] = None if pd.isna(value) else float(value)
    return out


@dataclass(frozen=True)
class Analysis:
    """What the report says about confidence: the best cell, each cell's verdict against it,
    and each factor's main effect (only factors with at least two levels)."""

    best: str | None
    verdicts: dict[str, conf.Verdict]
    effects: dict[str, conf.Effect]
    seeds: int  # seeds per cell

    @property
    def tied(self) -> list[str]:
        """The cells tied with the best, in grid order (the best excluded)."""
        return [cell for cell, v in self.verdicts.items() if v.verdict == "tied"]

    @property
    def group(self) -> set[str]:
        """The best and the cells tied with it: the tables' bold."""
        return {cell for cell, v in self.verdicts.items() if v.verdict in ("best", "tied")}


def analyze(rows: pd.DataFrame) -> Analysis:
    """Verdicts against the best cell (ranked as the leaderboard ranks) and main effects."""
    summary = summarize(rows)
    best = best_cell(summary)
    accuracy = accuracy_by_seed(rows)
    verdicts = conf.verdicts(accuracy, best) if best is not None else {}
    effects = {}
    for column in FACTORS:
        levels = list(dict.fromkeys(rows[column]))
        if len(levels) >= 2:
            level_of = {str(r["cell"]): str(r[column]) for _, r in rows.iterrows()}
            effects[column] = conf.main_effect(accuracy, level_of, levels)
    return Analysis(best, verdicts, effects, int(rows.groupby("cell")["seed"].count().max()))


def cell_confidence(rows: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per cell, what its MLflow runs get: the interval of its mean test accuracy, its
    difference to the best (points of accuracy as a fraction) with interval, the adjusted p,
    and its verdict. Values that do not exist (one seed, the best itself) are left out."""
    summary = summarize(rows).set_index("cell")
    analysis = analyze(rows)
    out: dict[str, dict[str, Any]] = {}
    for cell in summary.index:
        record = summary.loc[cell]
        verdict = analysis.verdicts.get(cell)
        entry: dict[str, Any] = {"verdict": verdict.verdict if verdict else "diverged"}
        for key, column in (
            ("test_accuracy_ci_low", "test_accuracy_low"),
            ("test_accuracy_ci_high", "test_accuracy_high"),
        ):
            if not pd.isna(record[column]):
                entry[key] = float(record[column])
        comparison = verdict.comparison if verdict else None
        if comparison is not None and comparison.diff is not None:
            entry["diff_to_best"] = comparison.diff.mean
            if comparison.diff.n > 1:
                entry["diff_to_best_low"], entry["diff_to_best_high"] = (
                    comparison.diff.low,
                    comparison.diff.high,
                )
        if verdict is not None and verdict.p_adjusted is not None:
            entry["p_adjusted"] = float(verdict.p_adjusted)
        out[str(cell)] = entry
    return out


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
    """A cell's value as text: `0.9694` (one seed), `0.9713 [0.9661, 0.9765]` (the mean over
    seeds with its 95 % t-interval), `diverged (epoch 4)`, with a note when some of its seeds
    diverged."""
    seeds, diverged = int(record["seeds"]), int(record["diverged"])
    if pd.isna(record[metric]):
        if diverged == seeds:
            if seeds == 1 and not pd.isna(record["diverged_epoch"]):
                return f"diverged (epoch {int(record['diverged_epoch'])})"
            return f"diverged ({diverged}/{seeds})"
        return "n/a"
    single = pd.isna(record[f"{metric}_low"])
    if single and float(record[metric]).is_integer() and metric in INT_COLUMNS:
        digits = 0  # one seed's epoch is a whole number
    text = f"{record[metric]:.{digits}f}"
    if not single:
        text += f" [{record[f'{metric}_low']:.{digits}f}, {record[f'{metric}_high']:.{digits}f}]"
    if diverged:
        text += f" ({diverged}/{seeds} diverged)"
    return text


def pivot_table(
    summary: pd.DataFrame, params: Params, pivot: Pivot, model: str, bold: set[str] | None
) -> str:
    """A Markdown table of one architecture's cells, optimizers as rows and activations as
    columns; the cells in `bold` (the best and those tied with it) in bold, or with `bold`
    None (one seed: nothing tested) the best value at the precision shown."""
    cells = summary[summary["model"] == model]
    best = None
    values = shown(cells[pivot.metric], pivot.digits)
    if bold is None and pivot.higher_is_better is not None and values.notna().any():
        best = values.max() if pivot.higher_is_better else values.min()
    by_cell = cells.set_index("cell")
    table = []
    for optimizer in params.grid.optimizer:
        row = {"optimizer": optimizer}
        for activation in params.grid.activation:
            cell = cell_name(model, optimizer, activation)
            record = by_cell.loc[cell]
            text = fmt_value(record, pivot.metric, pivot.digits)
            if bold is None:
                is_bold = best is not None and round(float(record[pivot.metric]), pivot.digits) == best
            else:
                is_bold = cell in bold and pivot.higher_is_better is not None
            row[activation] = f"**{text}**" if is_bold else text
        table.append(row)
    return pd.DataFrame(table).to_markdown(index=False, disable_numparse=True)


def pivot_section(summary: pd.DataFrame, params: Params, pivot: Pivot, bold: set[str] | None) -> list[str]:
    """A metric's optimizer x activation table, one per architecture of the grid."""
    labels = params.architectures()
    if len(labels) == 1:
        return [pivot_table(summary, params, pivot, params.grid.model[0], bold)]
    parts: list[str] = []
    for model, label in labels.items():
        parts += [f"### {label}", "", pivot_table(summary, params, pivot, model, bold), ""]
    return parts[:-1]


def architectures_table(summary: pd.DataFrame, params: Params, bold: set[str]) -> str:
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
            text = text if pd.isna(best["test_accuracy"]) else f"{text} ({best['activation']})"
            row[optimizer] = f"**{text}**" if best["cell"] in bold else text
        table.append(row)
    return pd.DataFrame(table).to_markdown(index=False, disable_numparse=True)


def leaderboard(summary: pd.DataFrame, analysis: Analysis) -> str:
    """Every cell ranked, as a Markdown table, with its verdict against the best, its difference
    to the best in points of accuracy (with interval) and the Holm-adjusted p."""
    table = []
    for rank, (_, record) in enumerate(leaderboard_order(summary).iterrows(), start=1):
        cell = str(record["cell"])
        verdict = analysis.verdicts.get(cell)
        comparison = verdict.comparison if verdict else None
        table.append(
            {
                "rank": str(rank),
                "cell": f"**{cell}**" if cell in analysis.group and analysis.seeds > 1 else cell,
                "verdict": verdict.verdict if verdict else "diverged",
                "test accuracy": fmt_value(record, "test_accuracy", 4),
                "Δ to best (points)": points(comparison.diff) if comparison and comparison.diff else "–",
                "adjusted p": p_text(verdict.p_adjusted if verdict else None),
                "pairs": str(comparison.pairs) if comparison else "–",
                "macro F1": fmt_value(record, "macro_f1", 4),
                "test loss": fmt_value(record, "test_loss", 4),
                "best val accuracy": fmt_value(record, "best_val_accuracy", 4),
                "at epoch": fmt_value(record, "best_epoch", 1),
                "seeds": str(int(record["seeds"])),
                "diverged": str(int(record["diverged"])),
            }
        )
    return pd.DataFrame(table).to_markdown(index=False, disable_numparse=True)


def points(diff: conf.Interval) -> str:
    """A difference of accuracies in points (×100): `9.20 [7.10, 11.30]`, or `9.20` for one pair."""
    text = f"{100 * diff.mean:.2f}"
    return text if diff.n < 2 else f"{text} [{100 * diff.low:.2f}, {100 * diff.high:.2f}]"


def p_text(p: float | None, *, words: bool = False) -> str:
    """A Holm-adjusted p-value as the report shows it: in a table `0.128`, `<0.001`, or `–` when
    there is none; with `words`, `adjusted p = 0.128`, `adjusted p < 0.001`, or why there is none."""
    if p is None:
        return "fewer than two seeds to test" if words else "–"
    if words:
        return "adjusted p < 0.001" if p < 0.001 else f"adjusted p = {p:.3f}"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def single_runs(rows: pd.DataFrame) -> str:
    """Each run's test accuracy with the Wilson 95 % interval of its test set's sampling error."""
    table = []
    for _, row in rows.iterrows():
        n = int(row["n_test"])
        if pd.isna(row["test_accuracy"]):
            accuracy, interval = "diverged", "–"
        else:
            low, high = conf.wilson(round(float(row["test_accuracy"]) * n), n)
            accuracy, interval = f"{row['test_accuracy']:.4f}", f"[{low:.4f}, {high:.4f}]"
        table.append(
            {
                "cell": row["cell"],
                "seed": str(row["seed"]),
                "test accuracy": accuracy,
                "Wilson 95 %": interval,
                "n": str(n),
            }
        )
    return pd.DataFrame(table).to_markdown(index=False, disable_numparse=True)


def per_class_table(evaluation: dict[str, Any]) -> str:
    """A cell's precision, recall and F1 per class (means over the seeds that did not diverge),
    with the test samples of the class summed over those seeds (the header says so)."""
    seeds = [s for s in evaluation["seeds"] if not s["diverged"]]
    table = []
    for i, name in enumerate(evaluation["class_names"]):
        entries = [s["classes"][i] for s in seeds]
        record = {"class": markdown_text(name)}
        for key in ("precision", "recall", "f1"):
            record[key] = f"{np.mean([e[key] for e in entries]):.4f}" if entries else "–"
        pooled = f"test samples (summed over {len(seeds)} seeds)" if len(seeds) > 1 else "test samples"
        record[pooled] = str(sum(e["support"] for e in entries))
        table.append(record)
    return pd.DataFrame(table).to_markdown(index=False, disable_numparse=True)


def markdown_text(text: str) -> str:
    """A user's text (a class name) safe in a Markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def best_levels(analysis: Analysis) -> dict[str, str]:
    """Each factor's level with the highest mean over seeds (factors with two levels or more)."""
    out = {}
    for column, effect in analysis.effects.items():
        means = {level: i.mean for level, i in effect.levels.items() if i is not None}
        if means:
            out[FACTORS[column]] = max(means, key=lambda level: means[level])
    return out


def best_on_validation(rows: pd.DataFrame) -> str | None:
    """The cell whose mean validation accuracy over its seeds (each at its checkpoint) is the
    highest, the first in grid order on a tie: the one put in use. The test split plays no part,
    so its test accuracy stays an estimate no choice has touched."""
    ranked = []
    for order, (cell, group) in enumerate(rows.groupby("cell", sort=False)):
        ok = group[~group["diverged"].astype(bool) & group["val_accuracy"].notna()]
        if ok.empty:
            continue
        # as the leaderboard ranks: a cell none of whose seeds diverged before a lucky survivor
        unstable = 1 - len(ok) / len(group)
        ranked.append((unstable, -float(ok["val_accuracy"].mean()), order, str(cell)))
    return min(ranked)[3] if ranked else None


def champion_entry(rows: pd.DataFrame, summary: pd.DataFrame) -> dict[str, Any] | None:
    """The cell chosen on validation (`best_on_validation`), its validation accuracy with its
    interval over seeds, and its test accuracy with its own."""
    cell = best_on_validation(rows)
    if cell is None:
        return None
    values = rows[(rows["cell"] == cell) & ~rows["diverged"].astype(bool)]["val_accuracy"]
    val = conf.t_interval([float(v) for v in values], bounds=conf.PROPORTION)
    record = summary.set_index("cell").loc[cell]
    entry = {
        "cell": cell,
        "val_accuracy": val.mean,
        "val_accuracy_low": val.low if val.n > 1 else None,
        "val_accuracy_high": val.high if val.n > 1 else None,
        "test_accuracy": _or_none(record["test_accuracy"]),
        "test_accuracy_low": _or_none(record["test_accuracy_low"]),
        "test_accuracy_high": _or_none(record["test_accuracy_high"]),
    }
    # Only the numbers it has: `dvc metrics` shows numbers, and a null is none.
    return {k: v for k, v in entry.items() if v is not None}


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
        if not pd.isna(record["test_accuracy_low"]):
            out["best_test_accuracy_low"] = float(record["test_accuracy_low"])
            out["best_test_accuracy_high"] = float(record["test_accuracy_high"])
    analysis = analyze(rows)
    out["tied_with_best"] = analysis.tied
    out["verdicts"] = {cell: v.verdict for cell, v in analysis.verdicts.items()}
    # A main effect's best level (averaged over the other factors), not the best cell's: the
    # two can differ, and the key says which.
    out["best_main_effect_levels"] = best_levels(analysis)
    # Per architecture (`dvc metrics show` flattens it to by_model.<model>.best_test_accuracy).
    by_model: dict[str, Any] = {}
    for model, cells in summary.groupby("model", sort=False):
        model_best = best_cell(cells)
        entry: dict[str, Any] = {"best_cell": model_best, "n_params": int(cells["n_params"].iloc[0])}
        if model_best is not None:
            entry["best_test_accuracy"] = float(cells.set_index("cell").loc[model_best, "test_accuracy"])
        by_model[str(model)] = entry
    out["by_model"] = by_model
    out["champion"] = champion_entry(rows, summary)
    return out


def _or_none(value: float) -> float | None:
    return None if pd.isna(value) else float(value)
