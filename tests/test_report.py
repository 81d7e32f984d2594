"""Code tests: the comparison report built from fixture metrics (pivots, best cell, mean ± std,
diverged cells), and the per-cell summary over seeds."""

from __future__ import annotations

import io as stdio
import math

import pandas as pd
import pytest

from annlab import metrics
from annlab import report as rep
from annlab.params import Params, parse_params

GRID = {"optimizer": ["sgd", "adam"], "activation": ["relu", "tanh"]}


def _row(cell: str, seed: int, acc: float | None, *, diverged_epoch: int | None = None) -> dict:
    optimizer, activation = cell.split("-")
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
    }


def _frame(rows: list[dict]) -> pd.DataFrame:
    return rep.rows_frame(rows)


def _params(seeds: list[int] | None = None) -> Params:
    return parse_params({"grid": {**GRID, "seeds": seeds}})


@pytest.fixture
def one_seed() -> pd.DataFrame:
    return _frame(
        [
            _row("sgd-relu", 42, None, diverged_epoch=4),
            _row("sgd-tanh", 42, 0.90),
            _row("adam-relu", 42, 0.97),
            _row("adam-tanh", 42, 0.96),
        ]
    )


@pytest.fixture
def three_seeds() -> pd.DataFrame:
    accs = {"sgd-relu": [0.90, 0.92, None], "sgd-tanh": [0.88, 0.89, 0.90],
            "adam-relu": [0.95, 0.97, 0.96], "adam-tanh": [0.96, 0.96, 0.96]}  # fmt: skip
    rows = []
    for cell, values in accs.items():
        for seed, acc in zip([1, 2, 3], values, strict=True):
            rows.append(_row(cell, seed, acc, diverged_epoch=None if acc else 3))
    return _frame(rows)


def _pivot(markdown: str, title: str) -> dict[tuple[str, str], str]:
    """The cells of the Markdown table under `## title`, by (optimizer, activation)."""
    section = markdown.split(f"## {title}\n\n", 1)[1].split("\n\n", 1)[0]
    lines = [line.strip("|").split("|") for line in section.splitlines()]
    header = [h.strip() for h in lines[0]]
    return {
        (cells[0].strip(), header[j]): cells[j].strip() for cells in lines[2:] for j in range(1, len(header))
    }


def test_summary_of_one_seed_keeps_its_values(one_seed: pd.DataFrame) -> None:
    summary = rep.summarize(one_seed).set_index("cell")
    assert summary.loc["adam-relu", "test_accuracy"] == 0.97
    assert math.isnan(summary.loc["adam-relu", "test_accuracy_std"])  # one seed: no spread
    assert summary.loc["sgd-relu", "diverged"] == 1
    assert math.isnan(summary.loc["sgd-relu", "test_accuracy"])


def test_summary_over_seeds_is_mean_and_sample_std_of_the_converged(three_seeds: pd.DataFrame) -> None:
    summary = rep.summarize(three_seeds).set_index("cell")
    assert summary.loc["sgd-tanh", "test_accuracy"] == pytest.approx(0.89)
    assert summary.loc["sgd-tanh", "test_accuracy_std"] == pytest.approx(0.01)  # ddof=1
    assert summary.loc["sgd-tanh", "best_epoch"] == pytest.approx(7.0)
    # A diverged seed is left out of the mean and counted.
    assert summary.loc["sgd-relu", "test_accuracy"] == pytest.approx(0.91)
    assert summary.loc["sgd-relu", "test_accuracy_std"] == pytest.approx(math.sqrt(2e-4))
    assert summary.loc["sgd-relu", "diverged"] == 1
    assert summary.loc["adam-tanh", "test_accuracy_std"] == 0


def test_best_cell_is_the_highest_accuracy_with_ties_broken_by_f1_then_loss(
    three_seeds: pd.DataFrame,
) -> None:
    assert rep.best_cell(rep.summarize(three_seeds)) == "adam-relu"  # ties adam-tanh on accuracy
    tie = three_seeds.copy()
    tie.loc[tie["cell"] == "adam-tanh", "macro_f1"] = 0.99
    assert rep.best_cell(rep.summarize(tie)) == "adam-tanh"


def test_best_cell_of_an_all_diverged_grid_is_none() -> None:
    rows = _frame(
        [_row(c, 42, None, diverged_epoch=2) for c in ("sgd-relu", "sgd-tanh", "adam-relu", "adam-tanh")]
    )
    assert rep.best_cell(rep.summarize(rows)) is None
    markdown = rep.comparison_markdown(_params(), rows, _timings(rows), "abc", {})
    assert "Every cell diverged" in markdown
    assert _pivot(markdown, "Test accuracy")["adam", "tanh"] == "diverged (epoch 2)"


def _timings(rows: pd.DataFrame) -> pd.DataFrame:
    frame = rows[["cell", "optimizer", "activation", "seed", "epochs_run"]].copy()
    frame["train_seconds"] = 2.0
    frame["seconds_per_epoch"] = 2.0 / frame["epochs_run"].astype(float)
    return frame[rep.TIMING_COLUMNS]


def test_pivots_show_each_cell_and_mark_the_best(one_seed: pd.DataFrame) -> None:
    markdown = rep.comparison_markdown(_params(), one_seed, _timings(one_seed), "0123456789ab", {})
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
    assert "**Best cell: adam-relu**" in markdown
    assert "- sgd-relu seed 42: loss not finite at epoch 4" in markdown
    assert "git commit `0123456789ab`" in markdown


def test_pivots_over_seeds_read_mean_plus_minus_std(three_seeds: pd.DataFrame) -> None:
    params = _params([1, 2, 3])
    markdown = rep.comparison_markdown(params, three_seeds, _timings(three_seeds), "abc", {})
    accuracy = _pivot(markdown, "Test accuracy")
    assert accuracy["sgd", "tanh"] == "0.8900 ± 0.0100"
    assert accuracy["sgd", "relu"] == "0.9100 ± 0.0141 (1/3 diverged)"
    assert accuracy["adam", "relu"] == "**0.9600 ± 0.0100**"
    assert "3 training seeds (1, 2, 3)" in markdown


def test_leaderboard_ranks_every_cell_with_diverged_last(one_seed: pd.DataFrame) -> None:
    markdown = rep.comparison_markdown(_params(), one_seed, _timings(one_seed), "abc", {})
    table = markdown.split("## Leaderboard\n\n", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    order = [line.split("|")[2].strip() for line in table]
    assert order == ["adam-relu", "adam-tanh", "sgd-tanh", "sgd-relu"]


def test_metric_tables_do_not_depend_on_timings(one_seed: pd.DataFrame) -> None:
    fast, slow = _timings(one_seed), _timings(one_seed)
    slow["train_seconds"] *= 3
    a = rep.comparison_markdown(_params(), one_seed, fast, "abc", {})
    b = rep.comparison_markdown(_params(), one_seed, slow, "abc", {})
    assert a != b
    assert a.split(rep.TIMING_HEADING)[0] == b.split(rep.TIMING_HEADING)[0]
    assert a.index(rep.TIMING_HEADING) > a.index("## Leaderboard")


def test_csv_has_a_row_per_cell_and_seed_with_every_metric(three_seeds: pd.DataFrame) -> None:
    text = rep.rows_csv(three_seeds)
    back = pd.read_csv(stdio.StringIO(text))
    assert len(back) == 12
    assert {"optimizer", "activation", "seed", "test_accuracy", "test_loss", "macro_f1"} <= set(back)
    assert back["test_accuracy"].isna().sum() == 1
    diverged = text.splitlines()[3].split(",")  # sgd-relu seed 3
    assert diverged[:6] == ["sgd-relu", "sgd", "relu", "3", "True", "3"]
    assert diverged[6] == ""  # no test accuracy, not "nan"
    assert text.splitlines()[1].split(",")[13] == "6"  # an epoch stays a whole number
    assert rep.rows_csv(rep.rows_frame(three_seeds.to_dict("records"))) == text


def test_a_cell_with_diverged_seeds_ranks_after_a_stable_one() -> None:
    rows = _frame(
        [
            _row("sgd-relu", 1, 0.95),
            _row("sgd-relu", 2, None, diverged_epoch=2),  # the survivor looks best ...
            _row("sgd-tanh", 1, 0.90),
            _row("sgd-tanh", 2, 0.92),
            *(_row(c, s, 0.5) for c in ("adam-relu", "adam-tanh") for s in (1, 2)),
        ]
    )
    order = list(rep.leaderboard_order(rep.summarize(rows))["cell"])
    assert order[0] == "sgd-tanh"  # ... but the stable cell is the best
    assert order[-1] == "sgd-relu"


def test_ties_are_judged_at_the_precision_shown() -> None:
    a, b = _row("adam-relu", 42, 0.96001), _row("adam-tanh", 42, 0.96004)
    a["macro_f1"], b["macro_f1"] = 0.97, 0.95
    rows = _frame([a, b, _row("sgd-relu", 42, 0.5), _row("sgd-tanh", 42, 0.5)])
    assert rep.best_cell(rep.summarize(rows)) == "adam-relu"  # both read 0.9600; F1 decides
    markdown = rep.comparison_markdown(_params(), rows, _timings(rows), "abc", {})
    accuracy = _pivot(markdown, "Test accuracy")
    assert accuracy["adam", "relu"] == accuracy["adam", "tanh"] == "**0.9600**"


def test_summary_metrics_name_the_best_cell(three_seeds: pd.DataFrame) -> None:
    summary = rep.summary_metrics(three_seeds)
    assert summary["best_cell"] == "adam-relu"
    assert summary["best_test_accuracy"] == pytest.approx(0.96)
    assert (summary["cells"], summary["runs"], summary["diverged_runs"]) == (4, 12, 1)


def test_cell_summary_of_evaluate_matches_the_report(three_seeds: pd.DataFrame) -> None:
    seeds = [
        {k: (None if pd.isna(v) else v) for k, v in row.items()}
        for row in three_seeds[three_seeds["cell"] == "sgd-relu"].to_dict("records")
    ]
    cell = metrics.cell_summary(seeds)
    table = rep.summarize(three_seeds).set_index("cell").loc["sgd-relu"]
    assert (cell["seeds"], cell["diverged"]) == (3, 1)
    assert cell["test_accuracy"] == pytest.approx(table["test_accuracy"])
    assert cell["test_accuracy_std"] == pytest.approx(table["test_accuracy_std"])


def test_cell_summary_of_one_diverged_seed_has_no_scores() -> None:
    (row,) = _frame([_row("sgd-relu", 42, None, diverged_epoch=4)]).to_dict("records")
    seed = {k: (None if pd.isna(v) else v) for k, v in row.items()}
    seed["best_val_accuracy"], seed["best_epoch"] = 0.5, 3  # before it diverged
    cell = metrics.cell_summary([seed])
    assert (cell["seeds"], cell["diverged"]) == (1, 1)
    assert all(cell[k] is None for k in metrics.SEED_METRICS)
    assert not any(k.endswith("_std") for k in cell)  # one seed: no spread to report
    converged = metrics.cell_summary([_row("adam-relu", 42, 0.9)])
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
