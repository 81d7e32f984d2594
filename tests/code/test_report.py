"""Code tests: the comparison report built from fixture metrics (pivots, best cell, mean ± std,
diverged cells), and the per-cell summary over seeds."""

from __future__ import annotations

import io as stdio
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from annlab.params import Params, parse_params
from annlab.report import charts, figures, metrics
from annlab.report import markdown as md
from annlab.report import tables as rep

GRID = {"optimizer": ["sgd", "adam"], "activation": ["relu", "tanh"]}
N_PARAMS = {"ann": 6570, "cnn": 109738}


def _row(cell: str, seed: int, acc: float | None, *, diverged_epoch: int | None = None) -> dict:
    model, optimizer, activation = cell.split("-")
    diverged = diverged_epoch is not None
    test = {k: None for k in metrics.TEST_METRICS} if diverged else {
        "test_accuracy": acc,
        "test_loss": 1 - acc,
        "macro_precision": acc,
        "macro_recall": acc,
        "macro_f1": acc - 0.01,
        "weighted_f1": acc - 0.005,
    }  # fmt: skip
    return {
        "cell": cell,
        "model": model,
        "optimizer": optimizer,
        "activation": activation,
        "seed": seed,
        "diverged": diverged,
        "diverged_epoch": diverged_epoch,
        **test,
        "best_val_accuracy": None if diverged else acc + 0.01,
        "best_epoch": diverged_epoch - 1 if diverged else 5 + seed,
        "epochs_run": diverged_epoch or 10,
        "n_test": 360,
        "n_params": N_PARAMS[model],
    }


def _frame(rows: list[dict]) -> pd.DataFrame:
    return rep.rows_frame(rows)


def _params(seeds: list[int] | None = None) -> Params:
    return parse_params({"grid": {**GRID, "seeds": seeds}})


@pytest.fixture
def one_seed() -> pd.DataFrame:
    return _frame(
        [
            _row("ann-sgd-relu", 42, None, diverged_epoch=4),
            _row("ann-sgd-tanh", 42, 0.90),
            _row("ann-adam-relu", 42, 0.97),
            _row("ann-adam-tanh", 42, 0.96),
        ]
    )


@pytest.fixture
def three_seeds() -> pd.DataFrame:
    accs = {"ann-sgd-relu": [0.90, 0.92, None], "ann-sgd-tanh": [0.88, 0.89, 0.90],
            "ann-adam-relu": [0.95, 0.97, 0.96], "ann-adam-tanh": [0.96, 0.96, 0.96]}  # fmt: skip
    rows = []
    for cell, values in accs.items():
        for seed, acc in zip([1, 2, 3], values, strict=True):
            rows.append(_row(cell, seed, acc, diverged_epoch=None if acc else 3))
    return _frame(rows)


def _pivot(markdown: str, title: str, label: str | None = None) -> dict[tuple[str, str], str]:
    """The cells of the Markdown table under `## title` (and `### label`, an architecture's), by
    row and column header."""
    section = markdown.split(f"## {title}\n\n", 1)[1]
    if label is not None:
        section = section.split("\n## ", 1)[0].split(f"### {label}\n\n", 1)[1]
    section = section[section.index("\n|") + 1 if not section.startswith("|") else 0 :].split("\n\n", 1)[0]
    lines = [line.strip("|").split("|") for line in section.splitlines()]
    header = [h.strip() for h in lines[0]]
    return {
        (cells[0].strip(), header[j]): cells[j].strip() for cells in lines[2:] for j in range(1, len(header))
    }


def test_summary_of_one_seed_keeps_its_values(one_seed: pd.DataFrame) -> None:
    summary = rep.summarize(one_seed).set_index("cell")
    assert summary.loc["ann-adam-relu", "test_accuracy"] == 0.97
    assert math.isnan(summary.loc["ann-adam-relu", "test_accuracy_std"])  # one seed: no spread
    assert summary.loc["ann-sgd-relu", "diverged"] == 1
    assert math.isnan(summary.loc["ann-sgd-relu", "test_accuracy"])


def test_summary_over_seeds_is_mean_and_sample_std_of_the_converged(three_seeds: pd.DataFrame) -> None:
    summary = rep.summarize(three_seeds).set_index("cell")
    assert summary.loc["ann-sgd-tanh", "test_accuracy"] == pytest.approx(0.89)
    assert summary.loc["ann-sgd-tanh", "test_accuracy_std"] == pytest.approx(0.01)  # ddof=1
    assert summary.loc["ann-sgd-tanh", "best_epoch"] == pytest.approx(7.0)
    # A diverged seed is left out of the mean and counted.
    assert summary.loc["ann-sgd-relu", "test_accuracy"] == pytest.approx(0.91)
    assert summary.loc["ann-sgd-relu", "test_accuracy_std"] == pytest.approx(math.sqrt(2e-4))
    assert summary.loc["ann-sgd-relu", "diverged"] == 1
    assert summary.loc["ann-adam-tanh", "test_accuracy_std"] == 0


def test_best_cell_is_the_highest_accuracy_with_ties_broken_by_f1_then_loss(
    three_seeds: pd.DataFrame,
) -> None:
    assert rep.best_cell(rep.summarize(three_seeds)) == "ann-adam-relu"  # ties ann-adam-tanh on accuracy
    tie = three_seeds.copy()
    tie.loc[tie["cell"] == "ann-adam-tanh", "macro_f1"] = 0.99
    assert rep.best_cell(rep.summarize(tie)) == "ann-adam-tanh"


def test_best_cell_of_an_all_diverged_grid_is_none() -> None:
    rows = _frame(
        [
            _row(c, 42, None, diverged_epoch=2)
            for c in ("ann-sgd-relu", "ann-sgd-tanh", "ann-adam-relu", "ann-adam-tanh")
        ]
    )
    assert rep.best_cell(rep.summarize(rows)) is None
    markdown = md.comparison_markdown(_params(), rows, _timings(rows), "abc", {})
    assert "Every cell diverged" in markdown
    assert _pivot(markdown, "Test accuracy")["adam", "tanh"] == "diverged (epoch 2)"


def _timings(rows: pd.DataFrame) -> pd.DataFrame:
    frame = rows[["cell", "model", "optimizer", "activation", "seed", "epochs_run"]].copy()
    frame["train_seconds"] = 2.0
    frame["seconds_per_epoch"] = 2.0 / frame["epochs_run"].astype(float)
    return frame[rep.TIMING_COLUMNS]


def test_pivots_show_each_cell_and_mark_the_best(one_seed: pd.DataFrame) -> None:
    markdown = md.comparison_markdown(_params(), one_seed, _timings(one_seed), "0123456789ab", {})
    accuracy = _pivot(markdown, "Test accuracy")
    assert accuracy == {
        ("sgd", "relu"): "diverged (epoch 4)",
        ("sgd", "tanh"): "0.9000",
        ("adam", "relu"): "**0.9700**",
        ("adam", "tanh"): "0.9600",
    }
    assert _pivot(markdown, "Test loss")["adam", "relu"] == "**0.0300**"  # lower is better
    assert (
        _pivot(markdown, "Epoch of the best validation accuracy")["sgd", "tanh"] == "47"
    )  # one seed: a whole epoch
    assert "**Best: ann-adam-relu**, test accuracy 0.9700. One seed cannot separate cells" in markdown
    assert "`grid.seeds: [1, 2, 3, 4, 5]`" in markdown
    assert "- ann-sgd-relu seed 42: loss not finite at epoch 4" in markdown
    assert "git commit `0123456789ab`" in markdown


def test_pivots_over_seeds_read_mean_and_t_interval_with_the_tie_group_in_bold(
    three_seeds: pd.DataFrame,
) -> None:
    params = _params([1, 2, 3])
    markdown = md.comparison_markdown(params, three_seeds, _timings(three_seeds), "abc", {})
    accuracy = _pivot(markdown, "Test accuracy")
    # 0.89 ± t(0.975, 2) * 0.01 / sqrt(3) = 0.89 ± 4.3027 * 0.005774
    assert accuracy["sgd", "tanh"] == "0.8900 [0.8652, 0.9148]"
    # two seeds left: t(0.975, 1) = 12.706, s = 0.01414: half-width 0.1271, cut at accuracy 1
    assert accuracy["sgd", "relu"] == "0.9100 [0.7829, 1.0000] (1/3 diverged)"
    assert accuracy["adam", "relu"] == "**0.9600 [0.9352, 0.9848]**"  # the best
    assert accuracy["adam", "tanh"] == "**0.9600 [0.9600, 0.9600]**"  # tied with it
    assert "3 training seeds (1, 2, 3), each with its own split" in markdown
    assert markdown.split("\n\n")[1].startswith(
        "**Best: ann-adam-relu**, test accuracy 0.9600 [0.9352, 0.9848]. Tied with it: ann-adam-tanh."
        " All others are worse (Holm-adjusted p < 0.05)."
    )


def test_leaderboard_ranks_every_cell_with_diverged_last(one_seed: pd.DataFrame) -> None:
    markdown = md.comparison_markdown(_params(), one_seed, _timings(one_seed), "abc", {})
    table = markdown.split("## Leaderboard\n\n", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    order = [line.split("|")[2].strip().strip("*") for line in table]
    assert order == ["ann-adam-relu", "ann-adam-tanh", "ann-sgd-tanh", "ann-sgd-relu"]


def test_metric_tables_do_not_depend_on_timings(one_seed: pd.DataFrame) -> None:
    fast, slow = _timings(one_seed), _timings(one_seed)
    slow["train_seconds"] *= 3
    a = md.comparison_markdown(_params(), one_seed, fast, "abc", {})
    b = md.comparison_markdown(_params(), one_seed, slow, "abc", {})
    assert a != b
    assert a.split(md.TIMING_HEADING)[0] == b.split(md.TIMING_HEADING)[0]
    assert a.index(md.TIMING_HEADING) > a.index("## Leaderboard")


def test_csv_has_a_row_per_cell_and_seed_with_every_metric(three_seeds: pd.DataFrame) -> None:
    text = rep.rows_csv(three_seeds)
    back = pd.read_csv(stdio.StringIO(text))
    assert len(back) == 12
    assert {"optimizer", "activation", "seed", "test_accuracy", "test_loss", "macro_f1"} <= set(back)
    assert back["test_accuracy"].isna().sum() == 1
    diverged = text.splitlines()[3].split(",")  # ann-sgd-relu seed 3
    assert diverged[:7] == ["ann-sgd-relu", "ann", "sgd", "relu", "3", "True", "3"]
    assert diverged[7] == ""  # no test accuracy, not "nan"
    assert text.splitlines()[1].split(",")[14] == "6"  # an epoch stays a whole number
    header = text.splitlines()[0].split(",")
    assert (
        text.splitlines()[1].split(",")[header.index("n_params")] == "6570"
    )  # the network's parameter count
    assert rep.rows_csv(rep.rows_frame(three_seeds.to_dict("records"))) == text


def test_a_cell_with_diverged_seeds_ranks_after_a_stable_one() -> None:
    rows = _frame(
        [
            _row("ann-sgd-relu", 1, 0.95),
            _row("ann-sgd-relu", 2, None, diverged_epoch=2),  # the survivor looks best ...
            _row("ann-sgd-tanh", 1, 0.90),
            _row("ann-sgd-tanh", 2, 0.92),
            *(_row(c, s, 0.5) for c in ("ann-adam-relu", "ann-adam-tanh") for s in (1, 2)),
        ]
    )
    order = list(rep.leaderboard_order(rep.summarize(rows))["cell"])
    assert order[0] == "ann-sgd-tanh"  # ... but the stable cell is the best
    assert order[-1] == "ann-sgd-relu"


def test_ties_are_judged_at_the_precision_shown() -> None:
    a, b = _row("ann-adam-relu", 42, 0.96001), _row("ann-adam-tanh", 42, 0.96004)
    a["macro_f1"], b["macro_f1"] = 0.97, 0.95
    rows = _frame([a, b, _row("ann-sgd-relu", 42, 0.5), _row("ann-sgd-tanh", 42, 0.5)])
    assert rep.best_cell(rep.summarize(rows)) == "ann-adam-relu"  # both read 0.9600; F1 decides
    markdown = md.comparison_markdown(_params(), rows, _timings(rows), "abc", {})
    accuracy = _pivot(markdown, "Test accuracy")
    assert accuracy["adam", "relu"] == accuracy["adam", "tanh"] == "**0.9600**"


def test_summary_metrics_name_the_best_cell(three_seeds: pd.DataFrame) -> None:
    summary = rep.summary_metrics(three_seeds)
    assert summary["best_cell"] == "ann-adam-relu"
    assert summary["best_test_accuracy"] == pytest.approx(0.96)
    assert (summary["cells"], summary["runs"], summary["diverged_runs"]) == (4, 12, 1)


def test_cell_summary_of_evaluate_matches_the_report(three_seeds: pd.DataFrame) -> None:
    seeds = [
        {k: (None if pd.isna(v) else v) for k, v in row.items()}
        for row in three_seeds[three_seeds["cell"] == "ann-sgd-relu"].to_dict("records")
    ]
    cell = metrics.cell_summary(seeds)
    table = rep.summarize(three_seeds).set_index("cell").loc["ann-sgd-relu"]
    assert (cell["seeds"], cell["diverged"]) == (3, 1)
    assert cell["test_accuracy"] == pytest.approx(table["test_accuracy"])
    assert cell["test_accuracy_std"] == pytest.approx(table["test_accuracy_std"])


def test_cell_summary_of_one_diverged_seed_has_no_scores() -> None:
    (row,) = _frame([_row("ann-sgd-relu", 42, None, diverged_epoch=4)]).to_dict("records")
    seed = {k: (None if pd.isna(v) else v) for k, v in row.items()}
    seed["best_val_accuracy"], seed["best_epoch"] = 0.5, 3  # before it diverged
    cell = metrics.cell_summary([seed])
    assert (cell["seeds"], cell["diverged"]) == (1, 1)
    assert all(cell[k] is None for k in metrics.SEED_METRICS)
    assert not any(k.endswith("_std") for k in cell)  # one seed: no spread to report
    converged = metrics.cell_summary([_row("ann-adam-relu", 42, 0.9)])
    assert converged["best_epoch"] == 47 and isinstance(converged["best_epoch"], int)


def test_mean_std_needs_two_values_for_a_spread() -> None:
    assert metrics.mean_std([]) == (None, None)
    assert metrics.mean_std([None, 0.5]) == (0.5, None)
    assert metrics.mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))


def test_grid_id_ignores_only_the_experiment_name() -> None:
    base = Params()
    assert base.grid_id() == parse_params({"mlflow": {"experiment": "other"}}).grid_id()
    assert base.grid_id() == parse_params({"train": {"optimizer": "sgd"}}).grid_id()  # cells override it
    assert base.grid_id() != parse_params({"train": {"epochs": 21}}).grid_id()
    assert base.grid_id() != parse_params({"grid": {"seeds": [1, 2]}}).grid_id()
    assert base.seeds == [42]
    assert parse_params({"grid": {"seeds": [3, 1]}}).seeds == [3, 1]


@pytest.fixture
def architectures() -> tuple[Params, pd.DataFrame]:
    """A grid over two architectures: the CNN wins with adam, the ANN with sgd."""
    params = parse_params({"grid": {**GRID, "model": ["ann", "cnn"]}})
    accs = {
        "sgd-relu": (0.90, 0.95),
        "sgd-tanh": (0.91, 0.93),
        "adam-relu": (0.96, 0.985),
        "adam-tanh": (0.97, 0.98),
    }
    rows = [
        _row(f"{model}-{cell}", 42, acc[i])
        for i, model in enumerate(("ann", "cnn"))
        for cell, acc in accs.items()
    ]
    rows[4] = _row("cnn-sgd-relu", 42, None, diverged_epoch=3)
    return params, _frame(rows)


def test_each_architecture_gets_its_own_tables(architectures: tuple[Params, pd.DataFrame]) -> None:
    params, rows = architectures
    markdown = md.comparison_markdown(params, rows, _timings(rows), "abc", {})
    ann = _pivot(markdown, "Test accuracy", "ann 64-32")
    cnn = _pivot(markdown, "Test accuracy", "cnn 64-128 / 64-32")
    assert ann == {("sgd", "relu"): "0.9000", ("sgd", "tanh"): "0.9100", ("adam", "relu"): "0.9600",
                   ("adam", "tanh"): "**0.9700**"}  # fmt: skip
    assert cnn["adam", "relu"] == "**0.9850**" and cnn["sgd", "relu"] == "diverged (epoch 3)"
    assert (
        "- **Models**: ann 64-32 (dense units); cnn 64-128 / 64-32 (conv filters / dense units," in markdown
    )
    assert "**Best: cnn-adam-relu**" in markdown
    # Training time: one row per architecture, then a table each.
    timing = markdown.split(md.TIMING_HEADING, 1)[1]
    assert re.search(r"\n\| ann 64-32 +\| 2\.0 +\| 0\.200 +\|\n", timing)
    assert "### cnn 64-128 / 64-32" in timing
    assert markdown.startswith("# Which architecture, optimizer and activation train best? (digits)")


def test_architectures_table_is_the_best_over_activations(architectures: tuple[Params, pd.DataFrame]) -> None:
    params, rows = architectures
    markdown = md.comparison_markdown(params, rows, _timings(rows), "abc", {})
    table = _pivot(markdown, "Architectures")
    assert table["ann 64-32", "sgd"] == "0.9100 (tanh)"
    assert table["ann 64-32", "adam"] == "0.9700 (tanh)"
    assert table["cnn 64-128 / 64-32", "sgd"] == "0.9300 (tanh)"  # relu diverged
    assert table["cnn 64-128 / 64-32", "adam"] == "0.9850 (relu)"
    assert (table["ann 64-32", "parameters"], table["cnn 64-128 / 64-32", "parameters"]) == (
        "6,570",
        "109,738",
    )


def test_summary_metrics_hold_the_best_cell_per_architecture(
    architectures: tuple[Params, pd.DataFrame],
) -> None:
    _, rows = architectures
    summary = rep.summary_metrics(rows)
    assert summary["best_cell"] == "cnn-adam-relu"
    assert summary["by_model"] == {
        "ann": {"best_cell": "ann-adam-tanh", "n_params": 6570, "best_test_accuracy": 0.97},
        "cnn": {"best_cell": "cnn-adam-relu", "n_params": 109738, "best_test_accuracy": 0.985},
    }


def test_figures_draw_a_panel_per_architecture(architectures: tuple[Params, pd.DataFrame]) -> None:
    params, rows = architectures
    heatmap = charts.heatmap_figure(rep.summarize(rows), params, "test_accuracy", "Test accuracy")
    titled = [ax.get_title() for ax in heatmap.axes if ax.get_title()]
    assert titled == ["ann 64-32", "cnn 64-128 / 64-32"]
    history = pd.DataFrame({"epoch": [1, 2], "val_accuracy": [0.5, 0.6], "val_loss": [1.0, 0.8]})
    histories = {cell.name: {42: history} for cell in params.cells()}
    curves = charts.curves_figure(histories, params, "activation", "curves")
    titles = [ax.get_title() for ax in curves.axes]
    assert len(titles) == 2 * 2 * 2  # (accuracy, loss) x architectures, by activations
    assert titles[0] == "ann 64-32: activation relu" and titles[-1] == "cnn 64-128 / 64-32: activation tanh"


def _table(markdown: str, title: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table under `## title`, as dicts by header."""
    section = markdown.split(f"## {title}\n\n", 1)[1]
    section = section[section.index("|") :].split("\n\n", 1)[0]
    lines = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()]
    return [dict(zip(lines[0], line, strict=True)) for line in lines[2:]]


def _five_seeds() -> pd.DataFrame:
    accs = {
        "ann-sgd-relu": [0.93, 0.92, 0.94, 0.925, 0.935],
        "ann-sgd-tanh": [0.55, 0.60, 0.52, 0.58, 0.57],
        "ann-adam-relu": [0.97, 0.965, 0.975, 0.97, 0.968],
        "ann-adam-tanh": [0.968, 0.97, 0.97, 0.966, 0.972],
    }
    return _frame(
        [_row(c, s, a) for c, values in accs.items() for s, a in zip([1, 2, 3, 4, 5], values, strict=True)]
    )


def test_verdicts_agree_with_a_recomputation_from_the_csv() -> None:
    """The leaderboard's differences, adjusted p-values and verdicts, recomputed from
    comparison.csv with scipy and a hand-written Holm, as a reader would check them."""
    from scipy import stats

    rows = _five_seeds()
    csv = pd.read_csv(stdio.StringIO(rep.rows_csv(rows)))
    markdown = md.comparison_markdown(_params([1, 2, 3, 4, 5]), rows, _timings(rows), "abc", {})
    board = {r["cell"].strip("*"): r for r in _table(markdown, "Leaderboard")}
    acc = csv.pivot(index="seed", columns="cell", values="test_accuracy")
    best = acc.mean().idxmax()
    assert board[best]["verdict"] == "best"
    others = [c for c in acc.columns if c != best]
    raw = {c: stats.ttest_rel(acc[best], acc[c]).pvalue for c in others}
    order = sorted(others, key=lambda c: raw[c])
    adjusted, running = {}, 0.0
    for i, c in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * raw[c]))
        adjusted[c] = running
    for c in others:
        d = acc[best] - acc[c]
        low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        assert board[c]["Δ to best (points)"] == f"{100 * d.mean():.2f} [{100 * low:.2f}, {100 * high:.2f}]"
        assert board[c]["adjusted p"] == ("<0.001" if adjusted[c] < 0.001 else f"{adjusted[c]:.3f}")
        assert board[c]["verdict"] == ("tied" if adjusted[c] >= 0.05 else "worse")
    summary = rep.summary_metrics(rows)
    assert summary["tied_with_best"] == [c for c in others if adjusted[c] >= 0.05] == ["ann-adam-tanh"]
    assert summary["verdicts"] == {c: board[c]["verdict"] for c in acc.columns}


def test_the_sentences_agree_with_the_tables() -> None:
    rows = _five_seeds()
    markdown = md.comparison_markdown(_params([1, 2, 3, 4, 5]), rows, _timings(rows), "abc", {})
    board = {r["cell"].strip("*"): r for r in _table(markdown, "Leaderboard")}
    said = markdown.split("## What the data says\n\n", 1)[1].split("\n\n", 1)[0]
    tied = [c for c, r in board.items() if r["verdict"] == "tied"]
    assert f"tied with it (Holm-adjusted p ≥ 0.05): {', '.join(tied)};" in said
    worse = {c: r for c, r in board.items() if r["verdict"] == "worse"}
    widest = max(worse, key=lambda c: float(worse[c]["Δ to best (points)"].split()[0]))
    assert f"the largest gap is {widest}'s, {worse[widest]['Δ to best (points)']} points below" in said
    effects = markdown.split("## Main effects\n\n", 1)[1]
    optimizer = _table("## x\n\n" + effects.split("### Optimizer\n\n", 1)[1].split("\n\n", 1)[1], "x")
    (pair,) = optimizer
    assert pair["pair"] == "sgd − adam" and pair["difference (points)"].startswith("-")
    magnitude = pair["difference (points)"].lstrip("-")
    low, high = magnitude.split(" [")[1].rstrip("]").split(", ")
    flipped = f"{magnitude.split(' [')[0]} [{high.lstrip('-')}, {low.lstrip('-')}]"
    assert f"By optimizer, averaged over the other factors: adam beats sgd by {flipped} points" in said
    assert rep.summary_metrics(rows)["best_main_effect_levels"] == {"optimizer": "adam", "activation": "relu"}


def test_one_seed_and_identical_cells_are_tied_not_judged() -> None:
    same = _frame([_row(c, s, 0.9) for c in ("ann-sgd-relu", "ann-adam-relu") for s in (1, 2, 3)])
    summary = rep.summary_metrics(same)
    assert summary["verdicts"] == {"ann-sgd-relu": "best", "ann-adam-relu": "tied"}
    one = _frame([_row("ann-sgd-relu", 42, 0.5), _row("ann-adam-relu", 42, 0.9)])
    verdicts = rep.summary_metrics(one)["verdicts"]
    assert verdicts == {"ann-adam-relu": "best", "ann-sgd-relu": "tied"}  # one seed tests nothing
    confidence = rep.cell_confidence(one)
    assert (
        "p_adjusted" not in confidence["ann-sgd-relu"]
        and "test_accuracy_ci_low" not in confidence["ann-adam-relu"]
    )


def test_an_all_diverged_cell_is_worse_and_the_forest_plot_draws_the_rest(tmp_path: Path) -> None:
    rows = _five_seeds()
    rows.loc[rows["cell"] == "ann-sgd-tanh", "test_accuracy"] = np.nan
    rows.loc[rows["cell"] == "ann-sgd-tanh", "diverged"] = True
    analysis = rep.analyze(rows)
    assert analysis.verdicts["ann-sgd-tanh"].verdict == "worse"
    assert analysis.verdicts["ann-sgd-tanh"].comparison.pairs == 0  # type: ignore[union-attr]
    fig = charts.forest_figure(rep.summarize(rows), analysis, "t")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[-1] == analysis.best and "ann-sgd-tanh" not in labels
    figures.save(fig, tmp_path / "forest.png")
    assert (tmp_path / "forest.png").stat().st_size > 0


class _Registry:
    """The registry calls the champion policy makes, over versions kept in memory."""

    def __init__(self, champion: object | None) -> None:
        self.champion = champion

    def get_model_version_by_alias(self, name: str, alias: str) -> object:
        from mlflow.exceptions import MlflowException

        if self.champion is None:
            raise MlflowException("no alias")
        return self.champion


def _version(
    number: str, dataset: str, mean: float, high: float | None, raw: str = "r1", n_test: int | None = None
) -> object:
    from types import SimpleNamespace

    tags = {"annlab.dataset": dataset, "annlab.cell_test_accuracy": str(mean), "annlab.raw_data_digest": raw}
    tags["annlab.cell_test_accuracy_high"] = "" if high is None else str(high)
    if n_test is not None:  # one seed: its own test accuracy and test set size
        tags |= {"annlab.n_test": str(n_test), "annlab.test_accuracy": str(mean)}
    return SimpleNamespace(version=number, tags=tags)


CHAMPION_CASES = [
    (None, _version("1", "digits", 0.97, 0.98), True, "there was none"),
    (_version("1", "digits", 0.97, 0.98), _version("2", "digits", 0.975, 0.99), False, "within its interval"),
    (_version("1", "digits", 0.97, 0.98), _version("2", "digits", 0.985, 0.99), True, "above version 1's"),
    # another dataset under one shared name: another model, never a better one
    (_version("1", "digits", 0.97, 0.98), _version("2", "iris.csv", 0.99, 0.995), False, "annlab-iris"),
    # the same file, changed since: other data
    (
        _version("1", "a.csv", 0.97, 0.98),
        _version("2", "a.csv", 0.90, 0.95, raw="r2"),
        True,
        "before it changed",
    ),
    # one seed: the champion's Wilson interval over its 360 test samples reaches 0.9829
    (_version("1", "digits", 0.97, None, n_test=360), _version("2", "digits", 0.98, None), False, "0.9829"),
    (_version("1", "digits", 0.97, None, n_test=360), _version("2", "digits", 0.99, None), True, "above"),
    (_version("3", "digits", 0.97, 0.98), _version("3", "digits", 0.97, 0.98), False, "stays version 3"),
]


@pytest.mark.parametrize(("champion", "new", "moves", "why"), CHAMPION_CASES)
def test_the_champion_moves_only_beyond_its_interval_or_to_new_data(
    champion: object | None, new: object, moves: bool, why: str
) -> None:
    from annlab.track.registry import champion_policy

    move, reason = champion_policy(_Registry(champion), "annlab", new)
    assert move is moves and why in reason


_REGISTER = """
import json, os, sys, time
from pathlib import Path
import mlflow
from mlflow.tracking import MlflowClient
from annlab.track.registry import register

uri, key, barrier, n = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])


class SlowStore(MlflowClient):
    # A busy store: each read that a decision rests on takes half a second, which opens the
    # window between reading and writing that racing stages fall into.
    def search_model_versions(self, *args, **kwargs):
        found = super().search_model_versions(*args, **kwargs)
        time.sleep(0.5)
        return found

    def get_model_version_by_alias(self, *args, **kwargs):
        try:
            return super().get_model_version_by_alias(*args, **kwargs)
        finally:
            time.sleep(0.5)


mlflow.set_tracking_uri(uri)
client = SlowStore()
tags = {"annlab.key": key, "annlab.dataset": "digits", "annlab.raw_data_digest": "r1",
        "annlab.cell_test_accuracy": "0.97", "annlab.cell_test_accuracy_high": "0.98"}
(barrier / str(os.getpid())).touch()
while len(list(barrier.iterdir())) < n:  # every process registers at the same moment
    time.sleep(0.01)
new = lambda: client.create_model_version("m", "file:///m", tags=tags)
version, added, why = register(client, "m", key, new)
print(json.dumps({"version": version.version, "added": added, "why": why}))
"""


@pytest.mark.slow
def test_reports_registering_side_by_side_add_one_version_per_grid_and_one_champion(tmp_path: Path) -> None:
    """Queued experiments' report stages register at once (`make sweep`): each grid adds its
    version once, and the champion is decided once, not raced (SQLite refuses the loser)."""
    import json
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from annlab.track import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.search_experiments()  # creates the database before the race

    def race(keys: list[str]) -> list[dict]:
        barrier = tmp_path / f"barrier-{keys[0]}"
        barrier.mkdir()
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _REGISTER, uri, key, str(barrier), str(len(keys))],
                stdout=subprocess.PIPE,
                text=True,
            )
            for key in keys
        ]
        outs = [p.communicate(timeout=300)[0] for p in procs]  # a hang guard; cold imports beside the suite
        assert [p.returncode for p in procs] == [0] * len(keys), outs
        return [json.loads(out.strip().splitlines()[-1]) for out in outs]

    grids = race(["g1", "g2", "g3", "g4"])  # four grids of equal merit
    versions = client.search_model_versions("name='m'")
    assert sorted(v.tags[tracking.KEY_TAG] for v in versions) == ["g1", "g2", "g3", "g4"]
    first = [g for g in grids if "there was none" in g["why"]]
    assert len(first) == 1, grids  # the others found it and stayed within its interval
    assert client.get_model_version_by_alias("m", "champion").version == first[0]["version"]

    again = race(["g5"] * 4)  # one grid reported four times at once
    assert sum(g["added"] for g in again) == 1 and len({g["version"] for g in again}) == 1, again
    assert len(client.search_model_versions("name='m'")) == 5


def test_runs_left_running_before_the_run_that_counts_are_marked_replaced_and_later_ones_kept(
    mlflow_store: str,
) -> None:
    """A worker killed mid-cell leaves its run RUNNING; the retry's finished run replaces it. A run
    begun after that one is someone's rerun still training: it is left alone."""
    from mlflow.tracking import MlflowClient

    from annlab.track import tracking
    from annlab.track.filing import supersede_stale

    client = MlflowClient(mlflow_store)
    exp = client.create_experiment("annlab")
    killed, kept, later = (client.create_run(exp, start_time=t) for t in (1_000, 2_000, 3_000))
    client.set_terminated(kept.info.run_id, "FINISHED")
    runs = [client.get_run(r.info.run_id) for r in (killed, kept, later)]

    supersede_stale(client, runs, kept.info.run_id, since=2_000)
    now = {r.info.run_id: client.get_run(r.info.run_id) for r in runs}
    assert now[killed.info.run_id].info.status == "FAILED"
    assert now[killed.info.run_id].data.tags[tracking.SUPERSEDED_TAG] == kept.info.run_id
    assert now[kept.info.run_id].info.status == "FINISHED"
    assert now[later.info.run_id].info.status == "RUNNING"
    assert tracking.SUPERSEDED_TAG not in now[later.info.run_id].data.tags

    # A run rebuilt from the outputs (no finished one was there) replaces every RUNNING one.
    rebuilt = client.create_run(exp, start_time=4_000).info.run_id
    supersede_stale(client, [client.get_run(later.info.run_id)], rebuilt, since=None)
    assert client.get_run(later.info.run_id).info.status == "FAILED"


def test_each_dataset_keeps_its_own_champion_and_a_shared_name_keeps_its_alias(tmp_path: Path) -> None:
    """A grid on other data registers under its dataset's name and leaves the first dataset's
    champion in use; under one name set for both, the alias stays where it was, and says why."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from annlab.track.registry import register

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    names = {
        label: parse_params({"data": {"dataset": kind, "path": path}}).registered_model
        for label, kind, path in [
            ("digits", "digits", "data/own"),
            ("mnist10k", "npz", "data/own/mnist10k.npz"),
        ]
    }
    assert names == {"digits": "annlab-digits", "mnist10k": "annlab-mnist10k"}
    shared = parse_params({"mlflow": {"registered_model": "team"}}).registered_model
    assert shared == "team"

    def version(name: str, key: str, dataset: str, mean: str) -> object:
        tags = {"annlab.key": key, "annlab.dataset": dataset, "annlab.raw_data_digest": dataset,
                "annlab.cell_val_accuracy": mean, "annlab.cell_val_accuracy_high": mean}  # fmt: skip
        return register(client, name, key, lambda: client.create_model_version(name, "file:///m", tags=tags))

    version(names["digits"], "g1", "digits", "0.97")
    _, _, why = version(names["mnist10k"], "g2", "mnist10k.npz", "0.99")
    assert "there was none" in why  # its own registered model, its own first champion
    assert client.get_model_version_by_alias("annlab-digits", "champion").tags["annlab.key"] == "g1"
    version("team", "g3", "digits", "0.97")
    _, added, why = version("team", "g4", "mnist10k.npz", "0.99")
    assert added and client.get_model_version_by_alias("team", "champion").tags["annlab.key"] == "g3"
    assert "a model of other data is another model" in why and "annlab-mnist10k" in why


def test_an_epochs_interval_stays_within_the_epochs_run() -> None:
    rows = _five_seeds()
    rows.loc[rows["cell"] == "ann-adam-relu", "best_epoch"] = [10, 10, 9, 10, 10]
    record = rep.summarize(rows).set_index("cell").loc["ann-adam-relu"]
    assert record["best_epoch"] == pytest.approx(9.8)
    assert record["best_epoch_high"] == 10.0 and 1.0 <= record["best_epoch_low"] < 9.8


def test_pooled_counts_the_leaderboard_note_and_one_architecture_read_as_they_are() -> None:
    rows = _five_seeds()
    params = _params([1, 2, 3, 4, 5])
    seeds = [{"diverged": False, "classes": [{"precision": 1, "recall": 1, "f1": 1, "support": 36}]}] * 5
    table = rep.per_class_table({"class_names": ["0"], "seeds": seeds})
    assert "test samples (summed over 5 seeds)" in table and "| 180 " in table
    markdown = md.comparison_markdown(params, rows, _timings(rows), "abc", {})
    board = markdown.split("## Leaderboard\n\n", 1)[1].split("\n## ", 1)[0]
    assert "percentage points" in board and "can therefore exclude 0 while the verdict is `tied`" in board
    assert "## Architectures" not in markdown  # one architecture: the pivots say it all
    one = _params([1])
    cells = ["ann-sgd-relu", "ann-sgd-tanh", "ann-adam-relu", "ann-adam-tanh"]
    single = _frame([_row(c, 1, a) for c, a in zip(cells, [0.9, 0.91, 0.95, 0.94], strict=True)])
    assert md.LEADERBOARD_NOTE not in md.comparison_markdown(one, single, _timings(single), "abc", {})


def test_the_summary_figures_zoom_to_the_cells_that_matter(tmp_path: Path) -> None:
    """digits-like: eight cells within a point, one far below. The heatmap's scale and the
    forest plot's axis are set by the eight; the outlier is marked, with its value."""
    from matplotlib.patches import Rectangle

    accuracies = [0.96, 0.962, 0.965, 0.958, 0.97, 0.967, 0.963, 0.961, 0.519]
    assert charts.scale_floor(np.array(accuracies)) == 0.958
    rows = _five_seeds()
    analysis = rep.analyze(rows)  # ann-sgd-tanh (about 0.56) lies far below the other three
    summary = rep.summarize(rows)
    fig = charts.heatmap_figure(summary, _params([1, 2, 3, 4, 5]), "test_accuracy", "t", analysis.group)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert sum("below scale" in t for t in texts) == 1
    boxes = [p for p in fig.axes[0].patches if isinstance(p, Rectangle) and p.get_edgecolor()[0] == 1.0]
    assert len(boxes) == len(analysis.group)
    assert fig.axes[-1].get_ylabel() == "test accuracy: mean over seeds"
    forest = charts.forest_figure(summary, analysis, "t")
    left, right = forest.axes[0].get_xlim()
    assert 0.6 < left < 0.92 and 0.975 < right < 1.0
    written = [a.get_text() for a in forest.axes[0].texts]
    assert len(written) == 1 and written[0].startswith("0.564")
    figures.save(forest, tmp_path / "forest.png")
