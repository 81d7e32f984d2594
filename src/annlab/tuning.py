"""Choosing a cell's learning rate on validation: the checkpoint a run is judged at, the order
of the trials (pure functions over per-epoch histories; the test split plays no part)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Checkpoint:
    """The epoch whose weights a run is evaluated and served with, and its validation metrics;
    `epoch` None when no epoch has finite validation metrics (the run diverged at once)."""

    epoch: int | None  # from 1
    val_accuracy: float | None
    val_loss: float | None

    @property
    def usable(self) -> bool:
        """Whether the checkpoint's weights are worth evaluating (finite validation metrics)."""
        return self.epoch is not None


def _finite(history: dict[str, list[float]], i: int) -> bool:
    return all(math.isfinite(history[c][i]) for c in ("loss", "val_loss", "val_accuracy"))


def checkpoint(history: dict[str, list[float]], kind: str, select_on: str) -> Checkpoint:
    """The checkpoint of a run with per-epoch `history`: with `kind` "last", its final epoch
    (unusable if that epoch's metrics are not finite); with "best", the first epoch with the best
    `select_on` ("val_accuracy": highest, "val_loss": lowest) among epochs whose metrics are finite."""
    n = len(history["loss"])
    if kind == "last":
        candidates = [n - 1] if n and _finite(history, n - 1) else []
    else:
        candidates = [i for i in range(n) if _finite(history, i)]
    if not candidates:
        return Checkpoint(None, None, None)
    if select_on == "val_loss":
        best = min(candidates, key=lambda i: (history["val_loss"][i], i))
    else:
        best = min(candidates, key=lambda i: (-history["val_accuracy"][i], i))
    return Checkpoint(best + 1, float(history["val_accuracy"][best]), float(history["val_loss"][best]))


@dataclass(frozen=True)
class Trial:
    """One learning rate tried on the tuning seed, judged at its checkpoint."""

    learning_rate: float
    checkpoint: Checkpoint

    def as_dict(self) -> dict[str, Any]:
        """The trial as choice.json records it."""
        c = self.checkpoint
        return {
            "learning_rate": self.learning_rate,
            "diverged": not c.usable,
            "checkpoint_epoch": c.epoch,
            "val_accuracy": c.val_accuracy,
            "val_loss": c.val_loss,
        }


def rank(trial: Trial, select_on: str) -> tuple[Any, ...]:
    """A trial's sort key, best first: a usable checkpoint before a diverged one, then the
    selection metric, then the lower validation loss, then the smaller learning rate."""
    c = trial.checkpoint
    if not c.usable:
        return (1, 0.0, 0.0, trial.learning_rate)
    assert c.val_accuracy is not None and c.val_loss is not None
    primary = c.val_loss if select_on == "val_loss" else -c.val_accuracy
    return (0, primary, c.val_loss, trial.learning_rate)


def choose(trials: list[Trial], select_on: str) -> Trial:
    """The trial whose learning rate the cell trains every seed at (`rank`'s first)."""
    if not trials:
        raise ValueError("no trials to choose from")
    return min(trials, key=lambda t: rank(t, select_on))


def edge(chosen: float, tried: list[float]) -> str | None:
    """ "largest" or "smallest" when the chosen value is at that end of more than one value tried
    (the optimum may lie beyond it); None inside the range."""
    if len(tried) < 2:
        return None
    if chosen == max(tried):
        return "largest"
    if chosen == min(tried):
        return "smallest"
    return None


def edge_warning(cell: str, optimizer: str, chosen: float, tried: list[float]) -> str | None:
    """The report's warning for a choice at an edge of the values tried, naming the key to widen."""
    side = edge(chosen, tried)
    if side is None:
        return None
    beyond = "larger" if side == "largest" else "smaller"
    return (
        f"{cell}: {optimizer}'s best learning rate, {chosen:g}, is the {side} tried: the optimum may"
        f" lie beyond it; add {beyond} values to tuning.learning_rates.{optimizer}"
    )
