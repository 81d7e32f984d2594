"""The confidence statistics against hand-worked examples and scipy, with their edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from annlab.report import confidence as conf
from annlab.report.confidence import holm, main_effect, paired, t_interval, verdicts, wilson


def test_the_t_interval_of_one_to_five_by_hand() -> None:
    # mean 3, s = sqrt(2.5) = 1.5811, t(0.975, 4) = 2.7764: half-width 2.7764 * 1.5811 / sqrt(5)
    got = t_interval([1, 2, 3, 4, 5])
    assert got is not None
    assert (got.mean, got.n) == (3.0, 5)
    assert got.std == pytest.approx(1.5811388, abs=1e-6)
    assert (got.low, got.high) == (pytest.approx(1.0367568, abs=1e-6), pytest.approx(4.9632432, abs=1e-6))


def test_the_t_interval_drops_missing_values_and_needs_two_for_a_width() -> None:
    assert t_interval([]) is None and t_interval([None, math.nan]) is None  # type: ignore[list-item]
    one = t_interval([0.9, None, math.nan])  # type: ignore[list-item]
    assert one is not None and (one.mean, one.low, one.high, one.n, one.std) == (0.9, 0.9, 0.9, 1, None)


def test_wilson_by_hand_and_at_the_edges() -> None:
    # 7 of 10: centre (7 + z²/2) / (10 + z²), z = 1.96
    low, high = wilson(7, 10)
    assert (low, high) == (pytest.approx(0.3968, abs=1e-4), pytest.approx(0.8922, abs=1e-4))
    low, high = wilson(360, 360)
    assert high == 1.0 and 0.98 < low < 1.0  # a perfect run still has an interval
    with pytest.raises(ValueError):
        wilson(0, 0)


def test_holm_on_a_worked_example() -> None:
    # sorted 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> 0.06, monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, None, 0.9]) == [pytest.approx(1.0), None, pytest.approx(1.0)]
    assert holm([]) == []


def test_paired_matches_scipy() -> None:
    a = {1: 0.97, 2: 0.96, 3: 0.975, 4: 0.95, 5: 0.965}
    b = {1: 0.95, 2: 0.955, 3: 0.94, 4: 0.945, 5: 0.93}
    got = paired(a, b)
    x, y = np.array(list(a.values())), np.array(list(b.values()))
    assert got.pairs == 5
    assert got.p == pytest.approx(stats.ttest_rel(x, y).pvalue)
    assert got.diff is not None and got.diff.mean == pytest.approx(float(np.mean(x - y)))
    expected = stats.t.interval(0.95, 4, loc=np.mean(x - y), scale=stats.sem(x - y))
    assert (got.diff.low, got.diff.high) == pytest.approx(expected)


def test_degenerate_differences() -> None:
    same = {1: 0.9, 2: 0.8, 3: 0.85}
    tie = paired(same, dict(same))
    assert (tie.p, tie.pairs) == (1.0, 3)
    shifted = paired({s: v + 0.05 for s, v in same.items()}, same)
    assert shifted.p == 0.0 and shifted.diff is not None and shifted.diff.mean == pytest.approx(0.05)


def test_verdicts_over_the_edge_cases() -> None:
    acc = {
        "best": {1: 0.97, 2: 0.96, 3: 0.98, 4: 0.97},
        "close": {1: 0.96, 2: 0.97, 3: 0.975, 4: 0.965},
        "bad": {1: 0.50, 2: 0.52, 3: 0.49, 4: 0.51},
        "partly": {1: 0.96, 2: None, 3: math.nan, 4: 0.97},  # two seeds diverged
        "gone": {1: None, 2: None, 3: None, 4: None},  # every seed diverged
    }
    got = verdicts(acc, "best")
    assert got["best"].verdict == "best" and got["best"].p_adjusted is None
    assert got["close"].verdict == "tied"
    assert got["bad"].verdict == "worse" and got["bad"].p_adjusted < 0.05  # type: ignore[operator]
    assert got["partly"].comparison is not None and got["partly"].comparison.pairs == 2
    assert got["gone"].verdict == "worse" and got["gone"].comparison.pairs == 0  # type: ignore[union-attr]
    raw = [got[c].comparison.p for c in ("close", "bad", "partly", "gone")]  # type: ignore[union-attr]
    assert [got[c].p_adjusted for c in ("close", "bad", "partly", "gone")] == holm(raw)


def test_one_seed_cannot_separate_cells_and_identical_cells_tie() -> None:
    one = verdicts({"a": {1: 0.97}, "b": {1: 0.50}}, "a")
    assert one["b"].verdict == "tied" and one["b"].p_adjusted is None
    same = verdicts({"a": {1: 0.9, 2: 0.8}, "b": {1: 0.9, 2: 0.8}}, "a")
    assert (same["b"].verdict, same["b"].p_adjusted) == ("tied", 1.0)


def test_a_main_effect_averages_over_the_other_factors_per_seed() -> None:
    acc = {
        "adam-relu": {1: 0.96, 2: 0.97, 3: 0.95},
        "adam-tanh": {1: 0.94, 2: 0.95, 3: None},  # diverged at seed 3: left out of its mean
        "sgd-relu": {1: 0.90, 2: 0.88, 3: 0.89},
        "sgd-tanh": {1: 0.86, 2: 0.87, 3: 0.85},
    }
    level = {cell: cell.split("-")[0] for cell in acc}
    effect = main_effect(acc, level, ["adam", "sgd"])
    adam = effect.levels["adam"]
    assert adam is not None and adam.n == 3
    assert adam.mean == pytest.approx(np.mean([0.95, 0.96, 0.95]))  # seed 3: relu alone
    comparison, p_adj = effect.pairs[("adam", "sgd")]
    assert comparison.pairs == 3 and comparison.diff is not None and comparison.diff.mean > 0
    assert p_adj == comparison.p  # one pair of levels: Holm changes nothing


def test_an_interval_is_cut_to_the_range_of_its_metric() -> None:
    free = conf.t_interval([0.98, 1.0])
    cut = conf.t_interval([0.98, 1.0], bounds=conf.PROPORTION)
    assert free is not None and cut is not None
    assert free.high > 1.0 and cut.high == 1.0  # 0.99 ± 12.706 * 0.01
    assert cut.low == free.low and cut.mean == free.mean
