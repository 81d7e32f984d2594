"""Filing a grid in MLflow: its parent run, a child run per (cell, seed) from the DVC outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from annlab import io
from annlab.errors import UserError
from annlab.params import Params
from annlab.report import tables as rep
from annlab.report.metrics import SEED_METRICS
from annlab.track import registry, tracking


@dataclass(frozen=True)
class GridOutputs:
    """The DVC outputs the report files in MLflow, besides the rows."""

    metas: dict[tuple[str, int], dict[str, Any]]  # train's meta and timing per (cell, seed)
    histories: dict[str, dict[int, pd.DataFrame]]
    history_dir: Path
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

    Runs are found by key, so rerunning the report (or `annlab sync`) logs nothing twice. A
    child the store lacks is rebuilt from the DVC outputs: for a cell DVC took from its cache
    (trained for another grid), pointing at the run that trained it; for a cell trained while
    MLflow was out of reach, uploaded whole, model included.
    """
    exp_id = tracking.experiment_id(params.mlflow.experiment)  # sets the store: before any client
    client = MlflowClient()
    grid_id = params.grid_id()
    parent_id = tracking.grid_run(
        exp_id, grid_id, tracking.grid_name(params), tracking.grid_tags(params), merge=True
    )
    info = io.read_json(out.data_dir / "dataset.json")
    test_sets: dict[int, Any] = {}

    def test_set(seed: int) -> Any:
        """The seed's test split as an MLflow dataset (each seed has its own, per data.split_per_seed)."""
        if seed not in test_sets:
            split = io.split_dir(out.data_dir, seed)
            x_test, y_test = io.load_array(split, "x_test"), io.load_array(split, "y_test")
            test_sets[seed] = mlflow.data.from_numpy(
                x_test, targets=y_test, name=f"{info['dataset']}-testing"
            )
        return test_sets[seed]

    digest = io.data_digest(out.data_dir)
    confidence = rep.cell_confidence(rows)
    run_of: dict[tuple[str, int], str] = {}

    for _, row in rows.iterrows():
        cell, seed = row["cell"], int(row["seed"])
        meta = out.metas[cell, seed]
        logged = tracking.run_params(params, row, meta, seed)
        if tracking.cell_key(cell, logged, digest) != meta["cell_key"]:
            raise UserError(
                f"{out.models_dir / cell / io.seed_name(seed) / 'meta.json'}: trained on other params or"
                f" data than params.yaml and {out.data_dir} hold now; run `make repro` first. If that"
                " says the cell was restored from the run cache, the cache holds a wrong entry:"
                f" `dvc repro --force train@{cell}` trains it again and replaces the entry"
            )
        runs = tracking.find_runs(exp_id, {tracking.KEY_TAG: tracking.run_key(meta["cell_key"], grid_id)})
        finished = [r for r in runs if r.info.status == "FINISHED"]
        if finished:
            run_id, since = finished[0].info.run_id, finished[0].info.start_time
            if finished[0].data.tags.get(tracking.ROLE_TAG) == "trial":  # chosen, but MLflow was lost then
                seed_dir = out.models_dir / cell / io.seed_name(seed)
                history = out.history_dir / cell / f"{io.seed_name(seed)}.csv"
                name = tracking.cell_run_name(cell, seed, params.seeds)
                split = io.split_dir(out.data_dir, seed)
                tracking.promote_trial(run_id, float(row["learning_rate"]), seed_dir, history, split, name)
        else:
            run_id, since = rebuild_run(params, row, meta, out, exp_id, parent_id), None
        supersede_stale(client, runs, run_id, since)
        run_of[cell, seed] = run_id
        before = client.get_run(run_id)
        try:
            with mlflow.start_run(run_id=run_id):
                # Test metrics come from evaluate's files: log what the run lacks or holds differently.
                wanted = {k: float(row[k]) for k in TEST_METRIC_KEYS if not pd.isna(row[k])}
                # The cell's standing in the grid: its interval over seeds, its difference to the
                # best cell with interval, the Holm-adjusted p, and its verdict.
                standing = confidence[cell]
                wanted.update({k: v for k, v in standing.items() if isinstance(v, float)})
                mlflow.log_metrics(tracking.changed_metrics(before, wanted))
                mlflow.set_tag("annlab.verdict", standing["verdict"])
                contexts = {
                    tag.value
                    for i in before.inputs.dataset_inputs
                    for tag in i.tags
                    if tag.key == "mlflow.data.context"
                }
                if "testing" not in contexts:
                    mlflow.log_input(test_set(seed), context="testing")
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
                    "dataset": params.data.label,
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
            mlflow.set_tag("annlab.tied_with_best", ",".join(headline["tied_with_best"]) or "none")
        for path in out.grid_files:
            mlflow.log_artifact(str(path), artifact_path="report")
    print(
        f"report: MLflow grid run {parent_id} with {len(rows)} child runs,"
        f" in {tracking.redact(mlflow.get_tracking_uri())}"
    )
    if headline.get("champion") is not None:
        print(registry.register_best(params, rows, headline, out.metas, out.data_dir, run_of))


def supersede_stale(client: Any, runs: list[Any], run_id: str, since: int | None) -> None:
    """Mark FAILED, replaced by `run_id`, the runs of its key left RUNNING by a stage that lost
    the server mid-run or a worker killed mid-cell: those begun before `since` (the finished
    run's start, in ms; None for a run just rebuilt from the outputs: all). One begun later is
    a rerun still training, and is left alone."""
    for stale in runs:
        if stale.info.status == "RUNNING" and (since is None or stale.info.start_time < since):
            client.set_tag(stale.info.run_id, tracking.SUPERSEDED_TAG, run_id)
            client.set_terminated(stale.info.run_id, "FAILED")


def rebuild_run(
    params: Params, row: pd.Series, meta: dict[str, Any], out: GridOutputs, exp_id: str, parent_id: str
) -> str:
    """A finished child run for a cell the store lacks, rebuilt from its DVC outputs (params,
    datasets, per-epoch curves, training time, history, summary).

    If a run in the store trained the cell (same params, data and seed) for another grid, DVC
    took the cell from its cache: the new run points at that one, which holds the model.
    Otherwise the cell was trained while MLflow was out of reach, and its model is uploaded too.
    """
    client = MlflowClient()
    cell, seed, grid_id = row["cell"], int(row["seed"]), params.grid_id()
    trained = [
        r
        for r in tracking.find_runs(exp_id, {tracking.CELL_KEY_TAG: meta["cell_key"]})
        if tracking.REUSED_TAG not in r.data.tags
        and r.info.status == "FINISHED"
        and r.data.tags.get(tracking.ROLE_TAG) != "trial"  # a trial holds no model
    ]
    tags = {
        tracking.KEY_TAG: tracking.run_key(meta["cell_key"], grid_id),
        tracking.CELL_KEY_TAG: meta["cell_key"],
        **tracking.role_tags("final", float(row["learning_rate"])),
        tracking.PARENT_TAG: parent_id,
        tracking.CELL_TAG: cell,
        tracking.GRID_TAG: grid_id,
        tracking.DATASET_TAG: meta["dataset"],
        "annlab.data_digest": meta["data_digest"],
        **tracking.stage_tag("report"),
    }
    if trained:
        origin = trained[0].info.run_id
        tags[tracking.REUSED_TAG] = origin
        tags["mlflow.note.content"] = (
            "DVC reused this cell from its cache: it was trained (same params, data and"
            f" seed) in run {origin}, which holds the model. Rebuilt here from the DVC"
            " outputs so that this grid is complete."
        )
    else:
        tags["mlflow.note.content"] = (
            "Trained while MLflow could not be reached (offline, or the tracking server was"
            " lost), and uploaded afterwards from the DVC outputs (`annlab sync` or the report"
            " stage): the curves, metrics and model are those of that training."
        )
    run_id = client.create_run(
        exp_id, run_name=tracking.cell_run_name(cell, seed, params.seeds), tags=tags
    ).info.run_id
    tracking.log_history(run_id, out.histories[cell][seed])
    split = io.split_dir(out.data_dir, seed)
    logged = tracking.run_params(params, row, meta, seed)
    seed_name = io.seed_name(seed)
    with mlflow.start_run(run_id=run_id):  # ends it FINISHED
        tracking.log_cell_inputs(logged, grid_id, tracking.training_splits(split), meta["dataset"])
        tracking.log_cell_outputs(
            out.models_dir / cell / seed_name,
            out.history_dir / cell / f"{seed_name}.csv",
            split,
            with_model=not trained,
        )
    return run_id
