"""The comparison report of a grid, from DVC outputs: per-seed rows, per-cell summaries with
95 % intervals over seeds, which cells are tied with the best (`annlab.report.confidence`), pivot
tables, a leaderboard, plain sentences and figures. Pure functions; the `report` stage reads
and writes the files."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from annlab.params import Params, cell_name
from annlab.report import confidence as conf
from annlab.report import figures
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
            "diverged_epoch": group["diverged_epoch"].min(),
        }
        for metric in SEED_METRICS:
            values = [None if pd.isna(v) else float(v) for v in converged[metric]]
            mean, std = mean_std(values)
            record[metric] = np.nan if mean is None else mean
            record[f"{metric}_std"] = np.nan if std is None else std
            proportion = "accuracy" in metric or metric.startswith(("macro_", "weighted_"))
            bounds = conf.PROPORTION if proportion else (0.0, math.inf)  # losses, epochs
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
                "adjusted p": fmt_p(verdict.p_adjusted if verdict else None),
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


def p_text(p: float | None) -> str:
    """`adjusted p = 0.128`, `adjusted p < 0.001`, or why there is none."""
    if p is None:
        return "fewer than two seeds to test"
    return "adjusted p < 0.001" if p < 0.001 else f"adjusted p = {p:.3f}"


def fmt_p(p: float | None) -> str:
    """A p-value as the report shows it (`<0.001` below that; `–` when there is none)."""
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def header(params: Params, rows: pd.DataFrame, commit: str) -> str:
    """What was compared: dataset, model, training, seeds, code version and grid id."""
    data, train = params.data, params.train
    seeds = params.seeds
    train_pct = round(100 * (1 - data.test_size - data.val_size))
    hyper = "; ".join(
        f"{name} " + ", ".join(f"{k} {v}" for k, v in getattr(params.optimizers, name).model_dump().items())
        for name in params.grid.optimizer
    )
    per_seed = data.split_per_seed and len(seeds) > 1
    seed_text = (
        f"one training seed ({seeds[0]})"
        if len(seeds) == 1
        else f"{len(seeds)} training seeds ({', '.join(map(str, seeds))}),"
        + (" each with its own split;" if per_seed else " one split;")
        + " values are means over seeds with their 95 % interval"
    )
    split_seed = "each training seed" if per_seed else f"seed {params.seed}"
    question = (
        "Which optimizer and activation train this network best?"
        if len(params.grid.model) == 1
        else "Which architecture, optimizer and activation train best?"
    )
    return "\n".join(
        [
            f"# {question} ({data.label})",
            "",
            f"- **Dataset**: {dataset_text(params)}, split {train_pct}/{round(100 * data.val_size)}/"
            f"{round(100 * data.test_size)} % train/validation/test with {split_seed}"
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


def dataset_text(params: Params) -> str:
    """The data: `digits`, or the user's file with its kind and settings."""
    data = params.data
    if data.builtin:
        return data.dataset
    settings = {
        "csv": f"target `{data.target}`" + (f", dropped {', '.join(data.drop)}" if data.drop else ""),
        "parquet": f"target `{data.target}`" + (f", dropped {', '.join(data.drop)}" if data.drop else ""),
        "npz": "arrays x, y",
        "images": f"{data.color} images"
        + (f" resized to {data.image_size[0]}x{data.image_size[1]}" if data.image_size else ""),
    }
    return f"`{data.path}` ({data.dataset}, {settings[data.dataset]})"


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
    params: Params,
    rows: pd.DataFrame,
    timings: pd.DataFrame,
    commit: str,
    figures: dict[str, str],
    best_evaluation: dict[str, Any] | None = None,
) -> str:
    """The whole report. Everything above the training-time section reproduces exactly.

    `best_evaluation`: the best cell's evaluation (evaluate's per-class report), for its
    per-class table."""
    summary = summarize(rows)
    analysis = analyze(rows)
    # The answer first, under the question; what was compared after it.
    title, details = header(params, rows, commit).split("\n\n", 1)
    parts = [title, "", headline(summary, analysis), "", details]
    if analysis.best is not None:
        parts += ["", "## What the data says", "", *(f"- {s}" for s in sentences(summary, analysis, params))]
    parts += [
        "",
        "## Architectures",
        "",
        "Best mean test accuracy over the activations, per optimizer (ranked as the leaderboard"
        " ranks), with the activation that reached it; and each network's parameter count.",
        "",
        architectures_table(summary, params, analysis.group if analysis.seeds > 1 else set()),
    ]
    bold = analysis.group if analysis.seeds > 1 else None
    for pivot in PIVOTS:
        parts += ["", f"## {pivot.title}", "", *pivot_section(summary, params, pivot, bold)]
    parts += ["", "## Leaderboard", "", leaderboard(summary, analysis)]
    if analysis.effects:
        parts += ["", "## Main effects", "", *main_effects_section(analysis)]
    if best_evaluation is not None and analysis.best is not None:
        parts += ["", f"## Per class: {analysis.best}", "", per_class_table(best_evaluation)]
    parts += ["", "## Single runs", "", single_runs(rows)]
    parts += ["", "## Method", "", *method_note(params, rows, analysis)]

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


def headline(summary: pd.DataFrame, analysis: Analysis) -> str:
    """The report's first sentence: the best cell with its interval, the cells tied with it and
    the rest, e.g. "Best: ann-adam-relu, 0.9713 [0.9661, 0.9765]. Tied with it: ... ."."""
    if analysis.best is None:
        return "**Every cell diverged**; see below."
    record = summary.set_index("cell").loc[analysis.best]
    best = f"**Best: {analysis.best}**, test accuracy {fmt_value(record, 'test_accuracy', 4)}."
    if analysis.seeds < 2:
        return (
            f"{best} One seed cannot separate cells: its lead may be the luck of one training run"
            " and one split. List several seeds (`grid.seeds: [1, 2, 3, 4, 5]`) to get intervals"
            " and to learn which cells are tied with the best. Its values are in bold."
        )
    worse = [c for c, v in analysis.verdicts.items() if v.verdict == "worse"]
    tied = analysis.tied
    text = best + (f" Tied with it: {', '.join(tied)}." if tied else " No other cell is tied with it.")
    if worse:
        text += " All others are worse (Holm-adjusted p < 0.05)."
    else:
        text += " No cell is clearly worse."
    return text + " The best and the cells tied with it are in bold."


def sentences(summary: pd.DataFrame, analysis: Analysis, params: Params) -> list[str]:
    """Plain sentences generated from the numbers: the tie group, the worst gap, main effects."""
    by_cell = summary.set_index("cell")
    best = analysis.best
    assert best is not None
    n = analysis.seeds
    out = [
        f"{best} has the highest mean test accuracy, {fmt_value(by_cell.loc[best], 'test_accuracy', 4)}"
        f" over {n} seed{'s' if n != 1 else ''}."
    ]
    if n < 2:
        out.append("With one seed no difference can be tested: every verdict below is `tied` by default.")
        return out
    tied = analysis.tied
    if tied:
        out.append(
            f"{len(tied)} cell{'s are' if len(tied) > 1 else ' is'} tied with it (Holm-adjusted p ≥ 0.05):"
            f" {', '.join(tied)}; the data cannot tell {'them' if len(tied) > 1 else 'it'} from the best."
        )
    else:
        out.append("Every other cell is worse than it (Holm-adjusted p < 0.05).")
    worse = {c: v for c, v in analysis.verdicts.items() if v.verdict == "worse"}
    gaps = {c: v.comparison.diff for c, v in worse.items() if v.comparison and v.comparison.diff}
    if gaps:
        cell, gap = max(gaps.items(), key=lambda kv: kv[1].mean)
        out.append(
            f"{len(worse)} cell{'s are' if len(worse) > 1 else ' is'} clearly worse; the largest gap is"
            f" {cell}'s, {points(gap)} points below the best."
        )
    gone = [c for c, v in worse.items() if not (v.comparison and v.comparison.diff)]
    if gone:
        out.append(f"Every run of {', '.join(gone)} diverged: counted as worse.")
    for column, effect in analysis.effects.items():
        out.append(effect_sentence(FACTORS[column], effect))
    return out


def effect_sentence(factor: str, effect: conf.Effect) -> str:
    """One factor's main effect in words, e.g. "Averaged over the other factors, adam beats sgd
    by 9.20 points [7.10, 11.30] (adjusted p = 0.001); adam and rmsprop are tied (p = 0.41)."."""
    others = "the other factors"
    clauses = []
    for (a, b), (comparison, p) in effect.pairs.items():
        diff = comparison.diff
        if diff is None:
            clauses.append(f"{a} and {b} cannot be compared (no seed where both have a run)")
            continue
        if diff.mean < 0:  # name the better level first
            a, b = b, a
            diff = conf.Interval(-diff.mean, -diff.high, -diff.low, diff.n, diff.std)
        if p is not None and p < conf.ALPHA:
            clauses.append(f"{a} beats {b} by {points(diff)} points ({p_text(p)})")
        else:
            clauses.append(f"{a} and {b} are tied ({p_text(p)})")
    return f"By {factor}, averaged over {others}: " + "; ".join(clauses) + "."


def main_effects_section(analysis: Analysis) -> list[str]:
    """Per factor: each level's mean test accuracy over seeds (each seed's value the mean over
    the other factors' cells) with its interval, and every pair of levels compared."""
    parts = [
        "Each level's test accuracy averaged over the other factors' cells, seed by seed, then over"
        " seeds (95 % interval); each pair of levels compared over the seeds, Holm-adjusted within"
        " the factor.",
    ]
    for column, effect in analysis.effects.items():
        levels = [
            {
                FACTORS[column]: level,
                "test accuracy": "–" if i is None else _interval_text(i),
                "seeds": "0" if i is None else str(i.n),
            }
            for level, i in effect.levels.items()
        ]
        pairs = [
            {
                "pair": f"{a} − {b}",
                "difference (points)": points(c.diff) if c.diff else "–",
                "adjusted p": fmt_p(p),
                "pairs of seeds": str(c.pairs),
            }
            for (a, b), (c, p) in effect.pairs.items()
        ]
        parts += [
            "",
            f"### {FACTORS[column].capitalize()}",
            "",
            pd.DataFrame(levels).to_markdown(index=False, disable_numparse=True),
            "",
            pd.DataFrame(pairs).to_markdown(index=False, disable_numparse=True),
        ]
    return parts


def _interval_text(i: conf.Interval) -> str:
    return f"{i.mean:.4f}" if i.n < 2 else f"{i.mean:.4f} [{i.low:.4f}, {i.high:.4f}]"


def best_levels(analysis: Analysis) -> dict[str, str]:
    """Each factor's level with the highest mean over seeds (factors with two levels or more)."""
    out = {}
    for column, effect in analysis.effects.items():
        means = {level: i.mean for level, i in effect.levels.items() if i is not None}
        if means:
            out[FACTORS[column]] = max(means, key=lambda level: means[level])
    return out


def per_class_table(evaluation: dict[str, Any]) -> str:
    """A cell's precision, recall and F1 per class (means over the seeds that did not diverge),
    with the test samples of the class summed over seeds."""
    seeds = [s for s in evaluation["seeds"] if not s["diverged"]]
    table = []
    for i, name in enumerate(evaluation["class_names"]):
        entries = [s["classes"][i] for s in seeds]
        record = {"class": markdown_text(name)}
        for key in ("precision", "recall", "f1"):
            record[key] = f"{np.mean([e[key] for e in entries]):.4f}" if entries else "–"
        record["test samples"] = str(sum(e["support"] for e in entries))
        table.append(record)
    return pd.DataFrame(table).to_markdown(index=False, disable_numparse=True)


def markdown_text(text: str) -> str:
    """A user's text (a class name) safe in a Markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


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


def method_note(params: Params, rows: pd.DataFrame, analysis: Analysis) -> list[str]:
    """What was computed, with n: about five lines."""
    n, cells = analysis.seeds, rows["cell"].nunique()
    n_test = int(rows["n_test"].iloc[0])
    split = (
        "each seed drew its own stratified split (the same split for every cell of that seed)"
        if params.data.split_per_seed and n > 1
        else f"every run used the one split of seed {params.seed}"
    )
    return [
        f"- {cells} cells × {n} seed{'s' if n != 1 else ''}; {split}; {n_test} test samples a run.",
        "- A cell's value is the mean over its seeds that did not diverge, with the 95 % t-interval"
        " mean ± t(0.975, n−1)·s/√n (scipy.stats), cut to the range the metric can take (an"
        " accuracy's [0, 1]) where it would reach past it, as it can with few seeds.",
        "- Against the best cell (highest mean test accuracy, ranked as the leaderboard ranks): the"
        " per-seed differences over the seeds where both runs finished (`pairs`), their mean and"
        f" t-interval, a two-sided paired t-test (scipy.stats.ttest_rel), Holm-adjusted over the"
        f" {max(cells - 1, 0)} comparisons; `tied` when the adjusted p ≥ 0.05. Equal differences:"
        " none means p = 1, a constant one p = 0; a cell all of whose runs diverged is `worse`.",
        "- Main effects: for each factor with two levels or more, each level's per-seed mean over"
        " the other factors' cells (a diverged run is left out of its seed's mean), compared pair by"
        " pair the same way, Holm-adjusted within the factor.",
        "- Single runs: the Wilson 95 % interval of each run's test accuracy over its test samples,"
        " the test set's own sampling error.",
    ]


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
        if not pd.isna(record["test_accuracy_low"]):
            out["best_test_accuracy_low"] = float(record["test_accuracy_low"])
            out["best_test_accuracy_high"] = float(record["test_accuracy_high"])
    analysis = analyze(rows)
    out["tied_with_best"] = analysis.tied
    out["verdicts"] = {cell: v.verdict for cell, v in analysis.verdicts.items()}
    out["best_levels"] = best_levels(analysis)
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
    colour scale), annotated with the interval over seeds, the grid's best cell outlined."""
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


def forest_figure(summary: pd.DataFrame, analysis: Analysis, title: str) -> Any:
    """Cells sorted by mean test accuracy, one 95 % interval bar each (a dot for one seed), the
    best and the cells tied with it in another colour, the best's interval shaded across."""
    plt = figures.pyplot()
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
