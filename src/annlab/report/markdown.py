"""The Markdown text of the comparison report: the question and what was compared, the answer
in plain sentences, the main effects, the method and the training time, around the tables of
`annlab.report.tables`. Pure functions; the `report` stage writes the file."""

from __future__ import annotations

from typing import Any

import pandas as pd

from annlab.params import Params, cell_name
from annlab.report import confidence as conf
from annlab.report import tuned
from annlab.report.tables import (
    FACTORS,
    PIVOTS,
    Analysis,
    analyze,
    architectures_table,
    champion_entry,
    fmt_value,
    leaderboard,
    p_text,
    per_class_table,
    pivot_section,
    points,
    single_runs,
    summarize,
)

# Marks the start of the one section whose content changes from run to run.
TIMING_HEADING = "## Training time"


def comparison_markdown(
    params: Params,
    rows: pd.DataFrame,
    timings: pd.DataFrame,
    commit: str,
    figures: dict[str, str],
    best_evaluation: dict[str, Any] | None = None,
    trials: pd.DataFrame | None = None,
) -> str:
    """The whole report. Everything above the training-time section reproduces exactly.

    `best_evaluation`: the best cell's evaluation (evaluate's per-class report), for its
    per-class table; `trials`: the learning-rate trials (`tuned.trials_frame`), for the
    "Tuning" section."""
    summary = summarize(rows)
    analysis = analyze(rows)
    trials = trials if trials is not None else pd.DataFrame(columns=tuned.TRIAL_COLUMNS)
    # The answer first, under the question; what was compared after it.
    title, details = header(params, rows, commit).split("\n\n", 1)
    parts = [title, "", headline(summary, analysis), "", details]
    if analysis.best is not None:
        said = sentences(summary, analysis, params)
        if moved := tuned.moved_sentence(trials, analysis.effects.get("optimizer")):
            said.append(moved)
        parts += ["", "## What the data says", "", *(f"- {s}" for s in said)]
    parts += ["", "## Tuning", "", *tuned.tuning_section(params, trials)]
    if (champion := champion_entry(rows, summary)) is not None:
        parts += ["", "## The model in use", "", champion_text(champion)]
    if len(params.grid.model) > 1:  # with one architecture the table repeats the pivots below
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
    if analysis.seeds > 1:
        parts += ["", LEADERBOARD_NOTE]
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


def champion_text(champion: dict[str, Any]) -> str:
    """Which cell is registered for use and why: chosen on validation, with its test accuracy as
    an estimate that no choice has touched."""

    def value(metric: str) -> str:
        low, high = champion.get(f"{metric}_low"), champion.get(f"{metric}_high")
        interval = f" [{low:.4f}, {high:.4f}]" if low is not None and high is not None else ""
        return f"{champion[metric]:.4f}{interval}"

    val = value("val_accuracy")
    text = (
        f"The model registered for use (`@champion`) comes from **{champion['cell']}**, the cell with the"
        f" highest mean validation accuracy over its seeds, {val}. The test split played no part in"
        " that choice"
    )
    if champion.get("test_accuracy") is None:
        return text + "."
    return f"{text}, so its test accuracy, {value('test_accuracy')}, is an estimate no choice has touched."


def header(params: Params, rows: pd.DataFrame, commit: str) -> str:
    """What was compared: dataset, model, training, seeds, code version and grid id."""
    data, train = params.data, params.train
    seeds = params.seeds
    train_pct = round(100 * (1 - data.test_size - data.val_size))

    def settings(name: str) -> str:
        values = getattr(params.optimizers, name).model_dump()
        if params.tuning_for(name):  # its rate is each cell's own: the Tuning section gives it
            values["learning_rate"] = f"tuned (default {values['learning_rate']})"
        return f"{name} " + ", ".join(f"{k} {v}" for k, v in values.items())

    hyper = "; ".join(settings(name) for name in params.grid.optimizer)
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
            f"- **Training**: {train.epochs} epochs, batch {train.batch_size}; {hyper};"
            f" evaluated at the {train.checkpoint} checkpoint",
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
    by 9.20 [7.10, 11.30] points (adjusted p = 0.001); adam and rmsprop are tied (adjusted p = 0.410)."."""
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
            clauses.append(f"{a} beats {b} by {points(diff)} points ({p_text(p, words=True)})")
        else:
            clauses.append(f"{a} and {b} are tied ({p_text(p, words=True)})")
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
                "adjusted p": p_text(p),
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


# Beside the leaderboard: why a cell's interval can exclude 0 while its verdict is `tied`.
LEADERBOARD_NOTE = (
    "Δ to best is in percentage points (0.72 means 0.72 % of the test samples). Its interval is"
    " each cell's own 95 % interval, not adjusted for the number of cells compared; the verdict"
    " comes from the paired tests Holm-adjusted over every comparison with the best. An interval"
    " can therefore exclude 0 while the verdict is `tied`: the adjusted test asks for more"
    " evidence than one interval does, so that comparing many cells does not turn seed noise"
    " into a difference. The verdict is the one to act on."
)


def _interval_text(i: conf.Interval) -> str:
    return f"{i.mean:.4f}" if i.n < 2 else f"{i.mean:.4f} [{i.low:.4f}, {i.high:.4f}]"


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
        " none means p = 1, a constant one p = 0; a cell all of whose runs diverged is `worse`."
        " Differences are in percentage points. Their intervals are left unadjusted, as the"
        " cells' own are, and the verdicts alone are adjusted: simultaneous intervals would be"
        " wider than any single comparison needs, and the leaderboard says next to the table"
        " why the two can disagree.",
        "- Main effects: for each factor with two levels or more, each level's per-seed mean over"
        " the other factors' cells (a diverged run is left out of its seed's mean), compared pair by"
        " pair the same way, Holm-adjusted within the factor.",
        "- Single runs: the Wilson 95 % interval of each run's test accuracy over its test samples,"
        " the test set's own sampling error.",
        *tuning_note(params),
    ]


def tuning_note(params: Params) -> list[str]:
    """The tuning protocol in three lines: the values tried, the selection metric, the seeds."""
    tuned = {o: t for o in params.grid.optimizer if (t := params.tuning_for(o))}
    if not tuned:
        return [
            f"- No tuning: each optimizer trained at its own learning rate; runs are evaluated at the"
            f" {params.train.checkpoint} epoch's weights."
        ]
    first = next(iter(tuned.values()))
    tried = "; ".join(f"{o}: {', '.join(f'{r:g}' for r in t.learning_rates)}" for o, t in tuned.items())
    untuned = [o for o in params.grid.optimizer if o not in tuned]
    return [
        f"- Tuning, values tried per optimizer: {tried}"
        + (f" ({', '.join(untuned)}: its own rate only)" if untuned else "")
        + ".",
        f"- Selection: the {'lowest' if first.select_on == 'val_loss' else 'highest'}"
        f" {first.select_on.replace('val_', 'validation ')} on seed {first.seed}, at each trial's"
        f" {params.train.checkpoint} checkpoint (ties: the lower validation loss, then the smaller rate; a"
        " diverged trial last); the test split plays no part in any choice.",
        f"- Seeds: the chosen rate trained on every seed ({', '.join(map(str, params.seeds))}); seed"
        f" {first.seed}'s run is its trial at that rate.",
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
