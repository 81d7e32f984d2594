"""Matplotlib helpers the plot and report stages share: a display-free backend, byte-stable PNGs,
per-epoch curves pooled over seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from annlab import io


def pyplot() -> Any:
    """Matplotlib's pyplot on the file-only Agg backend (stages have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> None:
    """Save a figure atomically, with no timestamp in the PNG so reruns give the same bytes."""
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    pyplot().close(fig)


def read_histories(history_dir: Path) -> dict[int, pd.DataFrame]:
    """A cell's per-seed histories (`seed-<n>.csv`), keyed by seed, in seed order."""
    return {seed: pd.read_csv(path) for seed, path in io.by_seed(history_dir.glob("*.csv")).items()}


def seed_band(histories: dict[int, pd.DataFrame], column: str) -> pd.DataFrame:
    """Per epoch: mean and sample std of `column` over the seeds whose value there is finite.

    A diverged seed stops contributing at the epoch its value went non-finite; epochs no seed
    reached finitely are dropped, so a curve ends where training ended.
    """
    long = pd.concat([h[["epoch", column]] for h in histories.values()], ignore_index=True)
    long = long[np.isfinite(long[column])]
    band = long.groupby("epoch")[column].agg(["mean", "std", "count"]).reset_index()
    band["std"] = band["std"].fillna(0.0)
    return band


def plot_band(ax: Any, band: pd.DataFrame, label: str, **style: Any) -> None:
    """A mean curve with a shaded ±1 std band (no band where a single seed is left)."""
    (line,) = ax.plot(band["epoch"], band["mean"], label=label, **style)
    if (band["count"] > 1).any():
        ax.fill_between(
            band["epoch"], band["mean"] - band["std"], band["mean"] + band["std"],
            color=line.get_color(), alpha=0.15, linewidth=0,
        )  # fmt: skip


def largest_finite(histories: list[pd.DataFrame], column: str) -> float:
    """The largest finite value of `column` over the histories (0 when there is none)."""
    values = (
        np.concatenate([h[column].to_numpy(dtype=float) for h in histories]) if histories else np.empty(0)
    )
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else 0.0


# Above this, a loss axis turns logarithmic: a diverging run would flatten every other curve.
LOG_SCALE_ABOVE = 100.0
