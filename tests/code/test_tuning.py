"""Code tests: choosing a learning rate on validation (checkpoints, ties, diverged trials, edges),
the report's account of it recomputed from the trials' histories, and the model in use chosen
on validation, not test."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from annlab import tuning
from annlab.params import Params
from annlab.report import tables, tuned

NAN = math.nan


def history(val_accuracy: list[float], val_loss: list[float] | None = None) -> dict[str, list[float]]:
    n = len(val_accuracy)
    val_loss = val_loss or [1.0 - a if math.isfinite(a) else NAN for a in val_accuracy]
    loss = [0.5 if math.isfinite(v) else NAN for v in val_loss]
    return {"loss": loss, "accuracy": [0.5] * n, "val_loss": val_loss, "val_accuracy": val_accuracy}


def test_best_checkpoint_is_the_first_best_epoch_and_last_is_the_final_one() -> None:
    peaks_early = history([0.6, 0.9, 0.9, 0.7])
    assert tuning.checkpoint(peaks_early, "best", "val_accuracy") == tuning.Checkpoint(
        2, 0.9, pytest.approx(0.1)
    )
    assert tuning.checkpoint(peaks_early, "last", "val_accuracy").epoch == 4
    assert tuning.checkpoint(peaks_early, "last", "val_accuracy").val_accuracy == 0.7


def test_val_loss_picks_the_lowest_loss_epoch() -> None:
    h = history([0.8, 0.8, 0.7], val_loss=[0.5, 0.3, 0.2])
    assert tuning.checkpoint(h, "best", "val_loss").epoch == 3
    assert tuning.checkpoint(h, "best", "val_accuracy").epoch == 1


def test_a_run_that_diverged_late_keeps_its_best_epoch_but_not_its_last() -> None:
    late = history([0.7, 0.95, NAN])
    assert tuning.checkpoint(late, "best", "val_accuracy").epoch == 2
    assert not tuning.checkpoint(late, "last", "val_accuracy").usable
    assert not tuning.checkpoint(history([NAN]), "best", "val_accuracy").usable


def trial(rate: float, acc: float | None, loss: float | None = None) -> tuning.Trial:
    if acc is None:
        return tuning.Trial(rate, tuning.Checkpoint(None, None, None))
    return tuning.Trial(rate, tuning.Checkpoint(3, acc, 1.0 - acc if loss is None else loss))


@pytest.mark.parametrize(
    ("trials", "select_on", "chosen"),
    [
        ([trial(0.01, 0.90), trial(0.1, 0.95), trial(1.0, 0.93)], "val_accuracy", 0.1),
        # a tie on accuracy: the lower validation loss
        ([trial(0.01, 0.95, 0.30), trial(0.1, 0.95, 0.20)], "val_accuracy", 0.1),
        # a tie on both: the smaller learning rate
        ([trial(0.3, 0.95, 0.2), trial(0.1, 0.95, 0.2)], "val_accuracy", 0.1),
        # a diverged trial ranks last, even below a poor one
        ([trial(1.0, None), trial(0.01, 0.2)], "val_accuracy", 0.01),
        # on val_loss, the lowest loss wins over the highest accuracy
        ([trial(0.01, 0.95, 0.40), trial(0.1, 0.94, 0.10)], "val_loss", 0.1),
        ([trial(0.01, 0.95, 0.40), trial(0.1, 0.94, 0.10)], "val_accuracy", 0.01),
    ],
)
def test_the_choice(trials: list[tuning.Trial], select_on: str, chosen: float) -> None:
    assert tuning.choose(trials, select_on).learning_rate == chosen


def test_an_edge_choice_is_warned_of_naming_the_key_to_widen() -> None:
    tried = [0.01, 0.1, 1.0]
    assert tuning.edge(1.0, tried) == "largest" and tuning.edge(0.01, tried) == "smallest"
    assert tuning.edge(0.1, tried) is None and tuning.edge(0.1, [0.1]) is None
    warning = tuning.edge_warning("ann-sgd-relu", "sgd", 1.0, tried)
    assert warning is not None
    assert (
        "1, is the largest tried" in warning and "add larger values to tuning.learning_rates.sgd" in warning
    )


def grid_params(**tuning_params: object) -> Params:
    return Params.model_validate(
        {
            "grid": {"optimizer": ["sgd", "adam"], "activation": ["relu"], "seeds": [1, 2]},
            "tuning": {"learning_rates": {"sgd": [0.01, 0.1, 1.0], "adam": [0.0001, 0.001]}, **tuning_params},
            "train": {"checkpoint": "best"},
        }
    )


def csv_history(val_accuracy: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "epoch": range(1, len(val_accuracy) + 1),
            "loss": [0.5 if math.isfinite(a) else NAN for a in val_accuracy],
            "accuracy": [0.5] * len(val_accuracy),
            "val_loss": [1 - a for a in val_accuracy],
            "val_accuracy": val_accuracy,
        }
    )


@pytest.fixture
def trials() -> pd.DataFrame:
    histories = {
        "ann-sgd-relu": {
            0.01: csv_history([0.3, 0.5]),
            0.1: csv_history([0.8, 0.9]),
            1.0: csv_history([0.95, NAN]),
        },
        "ann-adam-relu": {0.0001: csv_history([0.6, 0.7]), 0.001: csv_history([0.92, 0.91])},
    }
    return tuned.trials_frame(grid_params(), histories)


def test_the_report_recomputes_each_choice_from_the_histories(trials: pd.DataFrame) -> None:
    # sgd at 1.0 diverged in its last epoch, but its best epoch is the best of all: chosen, at
    # the edge of the values tried.
    assert tuned.chosen_rates(trials) == {"ann-sgd-relu": 1.0, "ann-adam-relu": 0.001}
    sgd = trials[trials["cell"] == "ann-sgd-relu"].set_index("learning_rate")
    assert sgd.loc[1.0, "checkpoint_epoch"] == 1 and not sgd.loc[1.0, "diverged"]
    assert bool(sgd.loc[0.01, "default"]) and not bool(sgd.loc[0.1, "default"])
    assert tuned.edge_warnings(trials) == [
        "ann-sgd-relu: sgd's best learning rate, 1, is the largest tried: the optimum may lie beyond it;"
        " add larger values to tuning.learning_rates.sgd",
        "ann-adam-relu: adam's best learning rate, 0.001, is the largest tried: the optimum may lie beyond"
        " it; add larger values to tuning.learning_rates.adam",
    ]
    assert tuned.summary_entries(trials)["chosen_learning_rates"] == tuned.chosen_rates(trials)


def test_the_section_sets_each_chosen_rate_beside_the_default(trials: pd.DataFrame) -> None:
    text = "\n".join(tuned.tuning_section(grid_params(), trials))
    assert "| ann-sgd-relu | 1 | 0.9500 | 0.01 | 0.5000 | 0.01, 0.1, 1 |" in text
    assert "| ann-adam-relu | 0.001 | 0.9200 | 0.001 | 0.9200 | 0.0001, 0.001 |" in text
    assert "The budgets differ (learning rates tried: sgd 3, adam 2): more trials favour sgd" in text


def test_the_defaults_gap_is_said_beside_the_tuned_one(trials: pd.DataFrame) -> None:
    sentence = tuned.moved_sentence(trials, None)
    assert sentence == (
        "At the default learning rates (tuning seed only, validation), sgd trailed adam by 42.0"
        " percentage points."
    )


def test_no_tuning_says_so() -> None:
    empty = pd.DataFrame(columns=tuned.TRIAL_COLUMNS)
    assert "No learning rate was tuned" in tuned.tuning_section(Params(), empty)[0]
    assert tuned.summary_entries(empty) == {}  # summary.json names no tuning it did not do


def rows_where_test_and_validation_disagree() -> pd.DataFrame:
    records = []
    for cell, val, test in (("ann-sgd-relu", 0.97, 0.90), ("ann-adam-relu", 0.93, 0.99)):
        for seed in (1, 2, 3):
            records.append(
                {
                    "cell": cell, "model": "ann", "optimizer": cell.split("-")[1], "activation": "relu",
                    "seed": seed, "diverged": False, "diverged_epoch": None,
                    "test_accuracy": test + seed / 1000,
                    "test_loss": 0.1, "macro_precision": test, "macro_recall": test, "macro_f1": test,
                    "weighted_f1": test, "best_val_accuracy": val, "best_epoch": 5, "epochs_run": 10,
                    "n_test": 100, "n_params": 10, "learning_rate": 0.1, "checkpoint_epoch": 5,
                    "val_accuracy": val + seed / 1000,
                }
            )  # fmt: skip
    return tables.rows_frame(records)


def test_the_model_in_use_is_the_best_on_validation_not_on_test() -> None:
    rows = rows_where_test_and_validation_disagree()
    headline = tables.summary_metrics(rows)
    assert headline["best_cell"] == "ann-adam-relu"  # the comparison on test is evaluation
    assert headline["champion"]["cell"] == "ann-sgd-relu"  # the choice is made on validation
    assert headline["champion"]["val_accuracy"] == pytest.approx(0.972)
    assert headline["champion"]["test_accuracy"] == pytest.approx(0.902)


def test_tuning_seed_zero_is_kept_and_an_untuned_cells_checkpoint_tracks_select_on() -> None:
    params = Params.model_validate(
        {
            "grid": {"seeds": [1, 0]},
            "tuning": {"learning_rates": {"sgd": [0.1, 0.3]}, "select_on": "val_loss", "seed": 0},
            "train": {"checkpoint": "best"},
        }
    )
    assert params.tuning_for("sgd").seed == 0  # type: ignore[union-attr]
    resolved = params.resolved_tuning()
    assert resolved["adam"] == {"learning_rates": None, "select_on": "val_loss", "seed": None}
    last = params.model_copy(update={"train": params.train.model_copy(update={"checkpoint": "last"})})
    assert last.resolved_tuning()["adam"] is None  # one run at the final epoch: nothing to pick


def test_every_trial_diverged_gets_its_own_warning() -> None:
    gone = {"ann-sgd-relu": {0.3: csv_history([NAN]), 1.0: csv_history([NAN])}}
    params = Params.model_validate(
        {
            "grid": {"optimizer": ["sgd"], "activation": ["relu"]},
            "tuning": {"learning_rates": {"sgd": [0.3, 1.0]}},
        }
    )
    trials = tuned.trials_frame(params, gone)
    assert tuned.edge_warnings(trials) == [
        "ann-sgd-relu: every learning rate tried diverged (0.3, 1); add smaller values to"
        " tuning.learning_rates.sgd"
    ]


def test_a_lucky_survivor_is_not_the_model_in_use() -> None:
    rows = rows_where_test_and_validation_disagree()
    lucky = rows["cell"] == "ann-sgd-relu"
    rows.loc[lucky & (rows["seed"] > 1), "diverged"] = True  # its one survivor is still the best
    assert tables.best_on_validation(rows) == "ann-adam-relu"
