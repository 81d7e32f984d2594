"""The report's account of tuning: each cell's learning-rate trials recomputed from their
histories, the chosen rates, the edge warnings, how far the defaults were from the tuned answer,
and the "Tuning" section (pure functions; the `report` stage reads the files)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from annlab import tuning
from annlab.params import Params
from annlab.report.confidence import Effect

TRIAL_COLUMNS = [
    "cell",
    "model",
    "optimizer",
    "activation",
    "learning_rate",
    "checkpoint_epoch",
    "val_accuracy",
    "val_loss",
    "diverged",
    "chosen",
    "default",
]


def trials_frame(params: Params, histories: dict[str, dict[float, pd.DataFrame]]) -> pd.DataFrame:
    """One row per cell and learning rate tried, judged again from its history CSV at the
    checkpoint `train.checkpoint` names, with the choice the same rule makes (`tuning.choose`).
    `histories`: per cell, each trial's history by learning rate (empty for a one-shot cell)."""
    records = []
    for cell, model, optimizer, activation in params.cells():
        found = params.tuning_for(optimizer)
        if found is None or not histories.get(cell):
            continue
        judged = [
            tuning.Trial(rate, tuning.checkpoint(_lists(h), params.train.checkpoint, found.select_on))
            for rate, h in sorted(histories[cell].items())
        ]
        chosen = tuning.choose(judged, found.select_on)
        default = float(getattr(params.optimizers, optimizer).learning_rate)
        for trial in judged:
            c = trial.checkpoint
            records.append(
                {
                    "cell": cell,
                    "model": model,
                    "optimizer": optimizer,
                    "activation": activation,
                    "learning_rate": trial.learning_rate,
                    "checkpoint_epoch": c.epoch,
                    "val_accuracy": c.val_accuracy,
                    "val_loss": c.val_loss,
                    "diverged": not c.usable,
                    "chosen": trial is chosen,
                    "default": trial.learning_rate == default,
                }
            )
    return pd.DataFrame(records, columns=TRIAL_COLUMNS)


def _lists(history: pd.DataFrame) -> dict[str, list[float]]:
    return {c: [float(v) for v in history[c]] for c in ("loss", "accuracy", "val_loss", "val_accuracy")}


def chosen_rates(trials: pd.DataFrame) -> dict[str, float]:
    """Each tuned cell's chosen learning rate."""
    if trials.empty:
        return {}
    picked = trials[trials["chosen"]]
    return {str(c): float(r) for c, r in zip(picked["cell"], picked["learning_rate"], strict=True)}


def edge_warnings(trials: pd.DataFrame) -> list[str]:
    """A line for every cell whose chosen rate is the smallest or largest it tried."""
    out: list[str] = []
    for cell, group in trials.groupby("cell", sort=False):
        tried = [float(r) for r in group["learning_rate"]]
        optimizer = str(group["optimizer"].iloc[0])
        if group["diverged"].astype(bool).all():
            out.append(
                f"{cell}: every learning rate tried diverged ({', '.join(f'{r:g}' for r in tried)});"
                f" add smaller values to tuning.learning_rates.{optimizer}"
            )
            continue
        chosen = float(group[group["chosen"]]["learning_rate"].iloc[0])
        warning = tuning.edge_warning(str(cell), optimizer, chosen, tried)
        if warning:
            out.append(warning)
    return out


def default_gap(trials: pd.DataFrame) -> dict[str, float | None]:
    """Per optimizer, the mean validation accuracy (tuning seed) of its cells at its default
    learning rate; None where the default was not among the values tried or every such run
    diverged."""
    out: dict[str, float | None] = {}
    if trials.empty:
        return out
    for optimizer, group in trials.groupby("optimizer", sort=False):
        at_default = group[group["default"] & ~group["diverged"]]["val_accuracy"]
        out[str(optimizer)] = float(at_default.mean()) if len(at_default) else None
    return out


def moved_sentence(trials: pd.DataFrame, optimizer_effect: Effect | None) -> str | None:
    """How much tuning moved the optimizers' comparison: their gap at the default learning
    rates (validation, tuning seed) next to the tuned gap over seeds on test."""
    defaults = {o: v for o, v in default_gap(trials).items() if v is not None}
    if len(defaults) < 2:
        return None
    best_default = max(defaults, key=lambda o: defaults[o])
    worst_default = min(defaults, key=lambda o: defaults[o])
    gap = 100 * (defaults[best_default] - defaults[worst_default])
    text = (
        f"At the default learning rates (tuning seed only, validation), {worst_default} trailed"
        f" {best_default} by {gap:.1f} percentage points"
    )
    if optimizer_effect is None:
        return text + "."
    levels = {k: v for k, v in optimizer_effect.levels.items() if v is not None}
    if best_default not in levels or worst_default not in levels:
        return text + "."
    tuned_best = max(levels, key=lambda o: levels[o].mean)
    if tuned_best != best_default:
        return f"{text}; tuned, {tuned_best} has the best mean test accuracy over the seeds."
    diff = _difference(optimizer_effect, best_default, worst_default)
    if diff is None:
        return text + "."
    return (
        f"{text}; tuned, over the seeds on test, by {100 * diff[0]:.1f}"
        f" [{100 * diff[1]:.1f}, {100 * diff[2]:.1f}] points."
    )


def _difference(effect: Effect, a: str, b: str) -> tuple[float, float, float] | None:
    """a − b of a main effect's levels with its interval (the effect stores each pair once)."""
    if (a, b) in effect.pairs:
        diff = effect.pairs[a, b][0].diff
        return (diff.mean, diff.low, diff.high) if diff else None
    if (b, a) in effect.pairs:
        diff = effect.pairs[b, a][0].diff
        return (-diff.mean, -diff.high, -diff.low) if diff else None
    return None


def budget_note(params: Params) -> str | None:
    """A sentence when the optimizers of the grid were not given the same number of trials."""
    budgets = {}
    for optimizer in params.grid.optimizer:
        found = params.tuning_for(optimizer)
        budgets[optimizer] = len(found.learning_rates) if found else 1
    if len(set(budgets.values())) < 2:
        return None
    most = max(budgets, key=lambda o: budgets[o])
    listed = ", ".join(f"{o} {n}" for o, n in budgets.items())
    return (
        f"The budgets differ (learning rates tried: {listed}): more trials favour {most}, whose"
        " best of more values is likelier to be high by chance as well as by merit."
    )


def tuning_section(params: Params, trials: pd.DataFrame) -> list[str]:
    """The report's "Tuning" section: the protocol in a line, each cell's chosen rate and its
    validation accuracy next to the default's, and the warnings."""
    if trials.empty:
        return ["No learning rate was tuned: every cell trained at its optimizer's own learning rate."]
    seed = next(params.tuning_for(o).seed for o in params.grid.optimizer if params.tuning_for(o))
    select = next(params.tuning_for(o).select_on for o in params.grid.optimizer if params.tuning_for(o))
    lines = [
        f"Each cell's learning rate was chosen on {select.replace('val_', 'validation ')} on seed {seed},"
        " at the"
        f" {params.train.checkpoint} checkpoint; the test split played no part. Validation accuracy"
        " of the chosen rate and of the optimizer's default (same seed):",
        "",
        "| cell | chosen learning rate | validation accuracy | default learning rate"
        " | its validation accuracy | tried |",
        "|---|---|---|---|---|---|",
    ]
    for cell, group in trials.groupby("cell", sort=False):
        chosen = group[group["chosen"]].iloc[0]
        default = group[group["default"]]
        optimizer = str(chosen["optimizer"])
        default_rate = float(getattr(params.optimizers, optimizer).learning_rate)
        if default.empty:
            default_acc = "not tried"
        elif bool(default["diverged"].iloc[0]):
            default_acc = "diverged"
        else:
            default_acc = f"{float(default['val_accuracy'].iloc[0]):.4f}"
        acc = "diverged" if bool(chosen["diverged"]) else f"{float(chosen['val_accuracy']):.4f}"
        tried = ", ".join(f"{r:g}" for r in group["learning_rate"])
        rate = float(chosen["learning_rate"])
        lines.append(f"| {cell} | {rate:g} | {acc} | {default_rate:g} | {default_acc} | {tried} |")
    warnings = edge_warnings(trials)
    if warnings:
        lines += ["", *(f"- Warning: {w}" for w in warnings)]
    if note := budget_note(params):
        lines += ["", note]
    return lines


def summary_entries(trials: pd.DataFrame) -> dict[str, Any]:
    """What summary.json says of tuning (nothing of a grid without it)."""
    if trials.empty:
        return {}
    return {"chosen_learning_rates": chosen_rates(trials), "edge_warnings": edge_warnings(trials)}
