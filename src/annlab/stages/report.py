"""Stage `report`: compare the grid's cells in reports/ (from DVC outputs only), then file the
grid in MLflow as one parent run with every cell's run as a child."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from annlab import cli, figures, io
from annlab import report as rep
from annlab.errors import UserError
from annlab.metrics import SEED_METRICS
from annlab.params import Params, load_params


def read_rows(params: Params, eval_dir: Path, models_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
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
                }
            )
            timing = io.read_json(seed_dir / "timing.json")
            timings.append({**coords, **timing, "epochs_run": entry["epochs_run"]})
            metas[cell, seed] = {**meta, **timing}
    return rep.rows_frame(rows), pd.DataFrame(timings, columns=rep.TIMING_COLUMNS), metas


@dataclass(frozen=True)
class GridOutputs:
    """The DVC outputs the report files in MLflow, besides the rows."""

    metas: dict[tuple[str, int], dict[str, Any]]  # train's meta and timing per (cell, seed)
    histories: dict[str, dict[int, pd.DataFrame]]
    cell_figures: Path
    models_dir: Path
    eval_dir: Path
    data_dir: Path
    grid_files: list[Path]


# What the report logs to a cell's run: its per-seed metrics (epochs_run is already the
# length of its curves) and the test-set size.
TEST_METRIC_KEYS = [*(k for k in SEED_METRICS if k != "epochs_run"), "n_test"]


def log_to_mlflow(params: Params, rows: pd.DataFrame, headline: dict[str, Any], out: GridOutputs) -> None:
    """File the grid in MLflow: its parent run, a child per (cell, seed) with test metrics,
    test dataset and figures, and the report on the parent.

    Runs are found by key, so rerunning the report logs nothing twice. A cell that DVC took
    from its cache (trained for another grid, e.g. before another optimizer's learning rate
    changed) gets a child rebuilt from its DVC outputs, pointing at the run that trained it.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    from annlab import tracking

    exp_id = tracking.experiment_id(params.mlflow.experiment)  # sets the store: before any client
    client = MlflowClient()
    grid_id = params.grid_id()
    parent_id = tracking.grid_run(exp_id, grid_id, tracking.grid_name(params), tracking.grid_tags(params))
    info = io.read_json(out.data_dir / "dataset.json")
    x_test, y_test = io.load_array(out.data_dir, "x_test"), io.load_array(out.data_dir, "y_test")
    test_set = mlflow.data.from_numpy(x_test, targets=y_test, name=f"{info['dataset']}-testing")

    for _, row in rows.iterrows():
        cell, seed = row["cell"], int(row["seed"])
        meta = out.metas[cell, seed]
        found = tracking.find_runs(exp_id, {tracking.KEY_TAG: tracking.run_key(meta["cell_key"], grid_id)})
        run_id = found[0].info.run_id if found else rebuild_run(params, row, meta, out, exp_id, parent_id)
        before = client.get_run(run_id)
        try:
            with mlflow.start_run(run_id=run_id):
                # Test metrics come from evaluate's files: log what the run lacks or holds differently.
                wanted = {k: float(row[k]) for k in TEST_METRIC_KEYS if not pd.isna(row[k])}
                mlflow.log_metrics(tracking.changed_metrics(before, wanted))
                contexts = {
                    tag.value
                    for i in before.inputs.dataset_inputs
                    for tag in i.tags
                    if tag.key == "mlflow.data.context"
                }
                if "testing" not in contexts:
                    mlflow.log_input(test_set, context="testing")
                for name in ("curves.png", "confusion_matrix.png"):
                    mlflow.log_artifact(str(out.cell_figures / cell / name), artifact_path="plots")
                mlflow.log_artifact(str(out.eval_dir / f"{cell}.json"), artifact_path="evaluation")
        finally:
            # Reopening the run moved its end to now (and a failure here would mark it FAILED):
            # its status and duration stay those of its training.
            client.set_terminated(run_id, before.info.status, end_time=before.info.end_time)

    parent = client.get_run(parent_id)
    with mlflow.start_run(run_id=parent_id):
        if "grid_id" not in parent.data.params:
            mlflow.log_params(
                {
                    "dataset": params.data.dataset,
                    "model": params.models_label(),
                    "epochs": params.train.epochs,
                    "batch_size": params.train.batch_size,
                    "grid.model": ",".join(params.grid.model),
                    "grid.optimizer": ",".join(params.grid.optimizer),
                    "grid.activation": ",".join(params.grid.activation),
                    "seeds": ",".join(map(str, params.seeds)),
                    "grid_id": grid_id,
                }
            )
        numbers = {k: float(v) for k, v in headline.items() if isinstance(v, (int, float))}
        for model, best in headline["by_model"].items():  # e.g. cnn.best_test_accuracy
            if best.get("best_test_accuracy") is not None:
                numbers[f"{model}.best_test_accuracy"] = best["best_test_accuracy"]
        mlflow.log_metrics(tracking.changed_metrics(parent, numbers))
        if headline["best_cell"] is not None:
            mlflow.set_tag("annlab.best_cell", headline["best_cell"])
        for path in out.grid_files:
            mlflow.log_artifact(str(path), artifact_path="report")
    print(f"report: MLflow grid run {parent_id} with {len(rows)} child runs, in {mlflow.get_tracking_uri()}")


def rebuild_run(
    params: Params, row: pd.Series, meta: dict[str, Any], out: GridOutputs, exp_id: str, parent_id: str
) -> str:
    """A finished child run for a cell DVC reused from its cache, rebuilt from its DVC outputs
    (params, per-epoch curves, training time); its model stays in the run that trained it."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from annlab import tracking

    client = MlflowClient()
    cell, seed, grid_id = row["cell"], int(row["seed"]), params.grid_id()
    trained = [
        r
        for r in tracking.find_runs(exp_id, {tracking.CELL_KEY_TAG: meta["cell_key"]})
        if tracking.REUSED_TAG not in r.data.tags and r.info.status == "FINISHED"
    ]
    origin = trained[0].info.run_id if trained else "unknown"
    run = client.create_run(
        exp_id,
        run_name=tracking.cell_run_name(cell, seed, params.seeds),
        tags={
            tracking.KEY_TAG: tracking.run_key(meta["cell_key"], grid_id),
            tracking.CELL_KEY_TAG: meta["cell_key"],
            tracking.ROLE_TAG: "cell",
            tracking.PARENT_TAG: parent_id,
            tracking.CELL_TAG: cell,
            tracking.GRID_TAG: grid_id,
            tracking.DATASET_TAG: meta["dataset"],
            tracking.REUSED_TAG: origin,
            tracking.DIVERGED_TAG: str(meta["diverged"]).lower(),
            **tracking.stage_tag("report"),
            "mlflow.note.content": (
                "DVC reused this cell from its cache: it was trained (same params, data and"
                f" seed) in run {origin}, which holds the model. Rebuilt here from the DVC"
                " outputs so that this grid is complete."
            ),
        },
    )
    now = int(time.time() * 1000)
    history = out.histories[cell][seed]
    curves = [
        Metric(column, float(value), now, int(epoch))
        for column in ("loss", "accuracy", "val_loss", "val_accuracy")
        for epoch, value in zip(history["epoch"], history[column], strict=True)
    ]
    extra = {
        "diverged": float(meta["diverged"]),
        "train_seconds": float(meta["train_seconds"]),
        "n_params": float(meta["n_params"]),
    }
    logged = {
        **tracking.cell_params(params, row["model"], row["optimizer"], row["activation"], seed),
        "grid_id": grid_id,
    }
    client.log_batch(
        run.info.run_id,
        metrics=[*curves, *(Metric(k, v, now, 0) for k, v in extra.items())],
        params=[Param(k, str(v)) for k, v in logged.items()],
    )
    client.log_artifact(
        run.info.run_id, str(out.models_dir / cell / io.seed_name(seed) / "model_summary.txt")
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def main(argv: list[str] | None = None) -> None:
    """Write the comparison report, its CSVs and figures; file the grid in MLflow."""
    p = cli.parser(__doc__)
    p.add_argument("--data", type=Path, required=True, help="preprocess's output (the test split)")
    p.add_argument("--eval", type=Path, required=True, help="evaluate's per-cell report folder")
    p.add_argument("--history", type=Path, required=True, help="train's per-cell history folders")
    p.add_argument("--models", type=Path, required=True, help="train's model folders (meta, timings)")
    p.add_argument("--cell-figures", type=Path, required=True, help="plot's per-cell figure folders")
    p.add_argument("--markdown", type=Path, required=True, help="the report, Markdown")
    p.add_argument("--csv", type=Path, required=True, help="one row per cell and seed, every metric")
    p.add_argument("--timings", type=Path, required=True, help="training time per cell and seed, CSV")
    p.add_argument("--summary", type=Path, required=True, help="headline metrics JSON (dvc metrics)")
    p.add_argument("--heatmap", type=Path, required=True, help="test-accuracy heatmap PNG")
    p.add_argument("--curves-by-activation", type=Path, required=True, help="PNG, a panel per activation")
    p.add_argument("--curves-by-optimizer", type=Path, required=True, help="PNG, a panel per optimizer")
    args = p.parse_args(argv)
    params = load_params(args.params)

    rows, timings, metas = read_rows(params, args.eval, args.models)
    histories = {cell.name: figures.read_histories(args.history / cell.name) for cell in params.cells()}
    summary = rep.summarize(rows)
    data_name = params.data.dataset
    figures.save(
        rep.heatmap_figure(summary, params, "test_accuracy", f"Test accuracy ({data_name})"), args.heatmap
    )
    figures.save(
        rep.curves_figure(histories, params, "activation", f"Validation curves per optimizer ({data_name})"),
        args.curves_by_activation,
    )
    figures.save(
        rep.curves_figure(histories, params, "optimizer", f"Validation curves per activation ({data_name})"),
        args.curves_by_optimizer,
    )
    shown = {
        "Test accuracy per optimizer and activation": args.heatmap,
        "Validation curves, one panel per activation": args.curves_by_activation,
        "Validation curves, one panel per optimizer": args.curves_by_optimizer,
    }
    links = {title: _relative(path, args.markdown.parent) for title, path in shown.items()}

    from annlab.tracking import code_version

    io.write_text(args.markdown, rep.comparison_markdown(params, rows, timings, code_version(), links))
    io.write_text(args.csv, rep.rows_csv(rows))
    io.write_text(args.timings, timings.to_csv(index=False, lineterminator="\n", float_format="%.3f"))
    headline = rep.summary_metrics(rows)
    io.write_json(args.summary, headline)
    print(
        f"report: {len(rows)} runs in {len(summary)} cells; best {headline['best_cell']}; -> {args.markdown}"
    )

    outputs = GridOutputs(
        metas=metas,
        histories=histories,
        cell_figures=args.cell_figures,
        models_dir=args.models,
        eval_dir=args.eval,
        data_dir=args.data,
        grid_files=[args.markdown, args.csv, args.timings, args.summary, *shown.values()],
    )
    log_to_mlflow(params, rows, headline, outputs)


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


if __name__ == "__main__":
    cli.run(main)
