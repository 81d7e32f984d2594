"""How sure the grid's answer is: intervals over seeds, paired tests against the best cell, and
main effects of each factor (pure functions over per-seed accuracies; scipy.stats does the
distributions).

- A cell's interval is the 95 % t-interval of its seeds' mean: mean ± t(0.975, n-1) · s/√n.
- A single run's test accuracy has the test set's own sampling error: a Wilson interval.
- Against the best cell, each other cell's per-seed differences d_s = best_s − cell_s (over
  the seeds where both finished) get a t-interval and a two-sided paired t-test, with the
  p-values Holm-adjusted over all comparisons with the best. Equal differences make the test
  degenerate: all zero means p = 1, a constant non-zero difference p = 0. Fewer than two pairs
  cannot be tested: the cell is `tied`, with no p-value, unless every run of it diverged
  (`worse`: it learned nothing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
ALPHA = 0.05


@dataclass(frozen=True)
class Interval:
    """A mean with its 95 % t-interval over n values (low = high = mean when n < 2)."""

    mean: float
    low: float
    high: float
    n: int
    std: float | None  # sample standard deviation; None for one value


PROPORTION = (0.0, 1.0)  # accuracies and F1 scores
DIFFERENCE = (-1.0, 1.0)  # a difference of two of them


def t_interval(
    values: Sequence[float], level: float = LEVEL, bounds: tuple[float, float] = (-math.inf, math.inf)
) -> Interval | None:
    """The mean of `values` (NaN and None dropped) with its t-interval; None when none is left.

    `bounds`: the values the quantity can take (an accuracy's [0, 1]); the interval is cut to
    them, as an accuracy of 1.02 says nothing a reader could use."""
    kept = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(kept.size)
    if n == 0:
        return None
    mean = float(kept.mean())
    if n == 1:
        return Interval(mean, mean, mean, 1, None)
    std = float(kept.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return Interval(mean, max(mean - half, bounds[0]), min(mean + half, bounds[1]), n, std)


def wilson(correct: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of a proportion `correct`/`n` (a run's test accuracy)."""
    if n <= 0:
        raise ValueError(f"wilson: n must be positive (got {n})")
    ci = stats.binomtest(int(correct), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of `pvalues` (None stays None and is not counted).

    Sorted ascending, the i-th of m p-values (from 0) becomes max over j ≤ i of (m − j)·p_j,
    capped at 1: the adjusted values keep the order of the raw ones.
    """
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(tested)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Comparison:
    """`a` against `b`, paired by seed: the differences a_s − b_s and their test."""

    diff: Interval | None  # None when no seed has both
    p: float | None  # two-sided paired t-test; None below two pairs
    pairs: int


def paired(a: Mapping[int, float | None], b: Mapping[int, float | None]) -> Comparison:
    """Compare two cells (or levels) seed by seed over the seeds where both have a value."""
    seeds = sorted(s for s in a.keys() & b.keys() if _finite(a[s]) and _finite(b[s]))
    x = np.asarray([a[s] for s in seeds], dtype=np.float64)
    y = np.asarray([b[s] for s in seeds], dtype=np.float64)
    d = x - y
    diff = t_interval(list(d), bounds=DIFFERENCE)
    if len(seeds) < 2:
        return Comparison(diff, None, len(seeds))
    if np.all(d == d[0]):  # zero variance: the t statistic is undefined
        return Comparison(diff, 1.0 if d[0] == 0 else 0.0, len(seeds))
    return Comparison(diff, float(stats.ttest_rel(x, y).pvalue), len(seeds))


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


@dataclass(frozen=True)
class Verdict:
    """A cell against the best: `best`, `tied` (adjusted p ≥ 0.05, or untestable) or `worse`."""

    verdict: str
    comparison: Comparison | None  # None for the best itself
    p_adjusted: float | None


def verdicts(accuracy: Mapping[str, Mapping[int, float | None]], best: str) -> dict[str, Verdict]:
    """Each cell's verdict against `best`, the p-values Holm-adjusted over all comparisons."""
    others = [cell for cell in accuracy if cell != best]
    comparisons = {cell: paired(accuracy[best], accuracy[cell]) for cell in others}
    adjusted = dict(zip(others, holm([comparisons[c].p for c in others]), strict=True))
    out = {best: Verdict("best", None, None)}
    for cell in others:
        p = adjusted[cell]
        if not any(_finite(v) for v in accuracy[cell].values()):
            verdict = "worse"  # every run diverged: nothing to test, and nothing learned
        else:
            verdict = "tied" if p is None or p >= ALPHA else "worse"
        out[cell] = Verdict(verdict, comparisons[cell], p)
    return out


def level_means(
    accuracy: Mapping[str, Mapping[int, float | None]], level_of: Mapping[str, str]
) -> dict[str, dict[int, float]]:
    """Per level of one factor and per seed, the mean accuracy over the level's cells (the
    other factors). A diverged run (None) is left out of its seed's mean; a seed where every
    cell of the level diverged has no mean for that level."""
    sums: dict[str, dict[int, list[float]]] = {}
    for cell, by_seed in accuracy.items():
        for seed, value in by_seed.items():
            if _finite(value):
                sums.setdefault(level_of[cell], {}).setdefault(seed, []).append(float(value))  # type: ignore[arg-type]
    return {level: {s: float(np.mean(v)) for s, v in seeds.items()} for level, seeds in sums.items()}


@dataclass(frozen=True)
class Effect:
    """One factor's levels (mean over seeds with interval) and every pair of levels compared."""

    levels: dict[str, Interval | None]
    pairs: dict[tuple[str, str], tuple[Comparison, float | None]]  # (a, b) -> a − b, adjusted p


def main_effect(
    accuracy: Mapping[str, Mapping[int, float | None]], level_of: Mapping[str, str], order: Sequence[str]
) -> Effect:
    """A factor's main effect: levels in `order`, pairs (a, b) with a before b, Holm within it."""
    means = level_means(accuracy, level_of)
    levels = {level: t_interval(list(means.get(level, {}).values()), bounds=PROPORTION) for level in order}
    keys = [(a, b) for i, a in enumerate(order) for b in order[i + 1 :]]
    comparisons = [paired(means.get(a, {}), means.get(b, {})) for a, b in keys]
    adjusted = holm([c.p for c in comparisons])
    return Effect(levels, dict(zip(keys, zip(comparisons, adjusted, strict=True), strict=True)))
