"""Stage `report`: compare the grid's cells in reports/ (from DVC outputs only), then file the
grid in MLflow as one parent run with every cell's run as a child."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from annlab import io, runtime
from annlab.errors import UserError
from annlab.params import Params, load_params
from annlab.report import charts, figures, markdown, tuned
from annlab.report import tables as rep
from annlab.report.metrics import SEED_METRICS
from annlab.track import store


def read_rows(
    params: Params, eval_dir: Path, models_dir: Path, histories: dict[str, dict[int, pd.DataFrame]]
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Per (cell, seed): its metrics, its timing, and train's meta and timing (for MLflow)."""
    rows, timings, metas = [], [], {}
    for cell, model, optimizer, activation in params.cells():
        path = eval_dir / f"{cell}.json"
        if not path.is_file():
            raise UserError(f"{path}: missing; cell {cell} of the grid has not been evaluated")
        by_seed = {s["seed"]: s for s in io.read_json(path)["seeds"]}
        if sorted(by_seed) != sorted(params.seeds):
            raise UserError(
                f"{path}: holds seeds {sorted(by_seed)}, but params.yaml asks for {sorted(params.seeds)};"
                " run `dvc repro` so the cell is trained again"
            )
        for seed in params.seeds:
            entry = by_seed[seed]
            coords = {
                "cell": cell,
                "model": model,
                "optimizer": optimizer,
                "activation": activation,
                "seed": seed,
            }
            seed_dir = models_dir / cell / io.seed_name(seed)
            meta = io.read_json(seed_dir / "meta.json")
            if "n_params" not in meta:
                raise UserError(
                    f"{seed_dir / 'meta.json'}: no n_params (written by an older annlab);"
                    f" run `dvc repro --force train@{cell}` to train the cell again"
                )
            rows.append(
                {
                    **coords,
                    "diverged": bool(entry["diverged"]),
                    "diverged_epoch": entry["diverged_epoch"],
                    **{k: entry[k] for k in SEED_METRICS},
                    "n_test": entry["n_test"],
                    "n_params": meta["n_params"],
                    **checkpoint_of(meta, histories[cell][seed], params, optimizer),
                }
            )
            timing = io.read_json(seed_dir / "timing.json")
            timings.append({**coords, **timing, "epochs_run": entry["epochs_run"]})
            metas[cell, seed] = {**meta, **timing}
    return rep.rows_frame(rows), pd.DataFrame(timings, columns=rep.TIMING_COLUMNS), metas


def checkpoint_of(
    meta: dict[str, Any], history: pd.DataFrame, params: Params, optimizer: str
) -> dict[str, Any]:
    """A run's learning rate and the checkpoint it is evaluated with (its epoch and validation
    accuracy): as train recorded them, or for a run at the final epoch without a record, that
    epoch's."""
    rate = meta.get("learning_rate", getattr(params.optimizers, optimizer).learning_rate)
    if "checkpoint_epoch" in meta:
        return {
            "learning_rate": rate,
            "checkpoint_epoch": meta["checkpoint_epoch"],
            "val_accuracy": meta["checkpoint_val_accuracy"],
        }
    last = None if meta["diverged"] or history.empty else float(history["val_accuracy"].iloc[-1])
    return {
        "learning_rate": rate,
        "checkpoint_epoch": None if last is None else len(history),
        "val_accuracy": last,
    }


def read_trials(params: Params, tuning_dir: Path) -> dict[str, dict[float, pd.DataFrame]]:
    """Each cell's learning-rate trials: its history CSV by learning rate (none for a one-shot
    cell), as train wrote them under `tuning_dir/<cell>/` (choice.json names the files)."""
    trials: dict[str, dict[float, pd.DataFrame]] = {}
    for cell in params.cells():
        choice_path = tuning_dir / cell.name / "choice.json"
        if not choice_path.is_file():
            raise UserError(f"{choice_path}: missing; run `dvc repro` so the cell is trained again")
        choice = io.read_json(choice_path)
        trials[cell.name] = {
            # round_trip: the floats train wrote with repr, read back to the same bits
            float(t["learning_rate"]): pd.read_csv(
                tuning_dir / cell.name / t["file"], float_precision="round_trip"
            )
            for t in choice["trials"]
        }
    return trials


def main(argv: list[str] | None = None) -> None:
    """Write the comparison report, its CSVs and figures; file the grid in MLflow."""
    p = runtime.parser(__doc__)
    p.add_argument("--data", type=Path, required=True, help="preprocess's output (the test split)")
    p.add_argument("--eval", type=Path, required=True, help="evaluate's per-cell report folder")
    p.add_argument("--history", type=Path, required=True, help="train's per-cell history folders")
    p.add_argument("--tuning", type=Path, help="train's per-cell learning-rate trials (none: no tuning)")
    p.add_argument("--models", type=Path, required=True, help="train's model folders (meta, timings)")
    p.add_argument("--cell-figures", type=Path, required=True, help="plot's per-cell figure folders")
    p.add_argument("--markdown", type=Path, required=True, help="the report, Markdown")
    p.add_argument("--csv", type=Path, required=True, help="one row per cell and seed, every metric")
    p.add_argument("--timings", type=Path, required=True, help="training time per cell and seed, CSV")
    p.add_argument("--summary", type=Path, required=True, help="headline metrics JSON (dvc metrics)")
    p.add_argument("--heatmap", type=Path, required=True, help="test-accuracy heatmap PNG")
    p.add_argument("--forest", type=Path, required=True, help="forest plot PNG: each cell's interval")
    p.add_argument("--curves-by-activation", type=Path, required=True, help="PNG, a panel per activation")
    p.add_argument("--curves-by-optimizer", type=Path, required=True, help="PNG, a panel per optimizer")
    p.add_argument("--learning-rates", type=Path, help="PNG: validation accuracy against learning rate")
    p.add_argument(
        "--mlflow-only",
        action="store_true",
        help="write nothing: file the grid in MLflow from the outputs already written (`annlab sync`)",
    )
    args = p.parse_args(argv)
    params = load_params(args.params)
    if args.mlflow_only and store.offline():
        raise UserError(f"{store.OFFLINE_ENV} is set: unset it to upload the runs to MLflow")
    histories = {cell.name: figures.read_histories(args.history / cell.name) for cell in params.cells()}
    rows, timings, metas = read_rows(params, args.eval, args.models, histories)
    trials = tuned.trials_frame(params, read_trials(params, args.tuning) if args.tuning else {})
    shown = {
        "Test accuracy per cell with its 95 % interval; the best and its ties in red": args.forest,
        "Test accuracy per optimizer and activation": args.heatmap,
        "Validation curves, one panel per activation": args.curves_by_activation,
        "Validation curves, one panel per optimizer": args.curves_by_optimizer,
    }
    if args.learning_rates:
        shown["Validation accuracy against learning rate, one panel per optimizer"] = args.learning_rates
    grid_files = [args.markdown, args.csv, args.timings, args.summary, *shown.values()]
    headline = {**rep.summary_metrics(rows), **tuned.summary_entries(trials)}
    if args.mlflow_only:
        if missing := [str(path) for path in grid_files if not path.is_file()]:
            raise UserError(f"{', '.join(missing)}: missing; run `dvc repro`, which writes the report, first")
    else:
        write_report(params, rows, timings, histories, trials, shown, args)
        io.write_json(args.summary, headline)
        print(
            f"report: {len(rows)} runs in {len(set(rows['cell']))} cells; best {headline['best_cell']};"
            f" -> {args.markdown}"
        )
    if store.offline():
        print(
            f"report: {store.OFFLINE_ENV} is set: the grid is not filed in MLflow;"
            " `annlab sync` does it later"
        )
        return
    from annlab.track import filing  # MLflow: only when the grid is filed

    outputs = filing.GridOutputs(
        metas=metas,
        histories=histories,
        history_dir=args.history,
        cell_figures=args.cell_figures,
        models_dir=args.models,
        eval_dir=args.eval,
        data_dir=args.data,
        grid_files=grid_files,
    )
    filing.log_to_mlflow(params, rows, headline, outputs)


def write_report(
    params: Params,
    rows: pd.DataFrame,
    timings: pd.DataFrame,
    histories: dict[str, dict[int, pd.DataFrame]],
    trials: pd.DataFrame,
    shown: dict[str, Path],
    args: Any,
) -> None:
    """Write the comparison report, its CSVs and its figures (the paths `args` names)."""
    from annlab.track.tracking import code_version

    data_name = params.data.label
    summary = rep.summarize(rows)
    analysis = rep.analyze(rows)
    group = analysis.group if analysis.seeds > 1 else set()
    title = f"Test accuracy ({data_name})"
    figures.save(charts.heatmap_figure(summary, params, "test_accuracy", title, group), args.heatmap)
    figures.save(charts.forest_figure(summary, analysis, title), args.forest)
    band = ", mean over seeds, shaded ±1 std" if params.seeds and len(params.seeds) > 1 else ""
    for panel, path in (("activation", args.curves_by_activation), ("optimizer", args.curves_by_optimizer)):
        curves = f"Validation curves, one panel per {panel} ({data_name}{band})"
        figures.save(charts.curves_figure(histories, params, panel, curves), path)
    if args.learning_rates:
        figures.save(
            charts.learning_rate_figure(trials, params, f"Learning rates tried ({data_name})"),
            args.learning_rates,
        )
    links = {title: _relative(path, args.markdown.parent) for title, path in shown.items()}
    best = rep.analyze(rows).best
    evaluation = io.read_json(args.eval / f"{best}.json") if best else None
    io.write_text(
        args.markdown,
        markdown.comparison_markdown(params, rows, timings, code_version(), links, evaluation, trials),
    )
    io.write_text(args.csv, rep.rows_csv(rows))
    io.write_text(args.timings, timings.to_csv(index=False, lineterminator="\n", float_format="%.3f"))


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


if __name__ == "__main__":
    runtime.run(main)
