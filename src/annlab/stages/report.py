"""Stage `report`: compare the grid's cells in reports/ (from DVC outputs only), then file the
grid in MLflow as one parent run with every cell's run as a child."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from annlab import io, runtime
from annlab.errors import UserError
from annlab.params import Params, load_params
from annlab.report import figures
from annlab.report import tables as rep
from annlab.report.metrics import SEED_METRICS


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
    import mlflow
    from mlflow.tracking import MlflowClient

    from annlab.track import tracking

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
        logged = tracking.cell_params(params, row["model"], row["optimizer"], row["activation"], seed)
        if tracking.cell_key(cell, logged, digest) != meta["cell_key"]:
            raise UserError(
                f"{out.models_dir / cell / io.seed_name(seed) / 'meta.json'}: trained on other params or"
                f" data than params.yaml and {out.data_dir} hold now; run `make repro` first. If that"
                f" says the cell was restored from the run cache, the cache holds an entry that make repro"
                f" wrote wrongly before annlab's fix of 2026-12-01: `dvc repro --force train@{cell}`"
                " trains it again and replaces the entry"
            )
        runs = tracking.find_runs(exp_id, {tracking.KEY_TAG: tracking.run_key(meta["cell_key"], grid_id)})
        finished = [r for r in runs if r.info.status == "FINISHED"]
        if finished:
            run_id, since = finished[0].info.run_id, finished[0].info.start_time
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
    if headline["best_cell"] is not None:
        print(register_best(params, rows, headline, out, run_of))


def supersede_stale(client: Any, runs: list[Any], run_id: str, since: int | None) -> None:
    """Mark FAILED, replaced by `run_id`, the runs of its key left RUNNING by a stage that lost
    the server mid-run or a worker killed mid-cell: those begun before `since` (the finished
    run's start, in ms; None for a run just rebuilt from the outputs: all). One begun later is
    a rerun still training, and is left alone."""
    from annlab.track import tracking

    for stale in runs:
        if stale.info.status == "RUNNING" and (since is None or stale.info.start_time < since):
            client.set_tag(stale.info.run_id, tracking.SUPERSEDED_TAG, run_id)
            client.set_terminated(stale.info.run_id, "FAILED")


def model_seed(rows: pd.DataFrame, cell: str) -> int:
    """Which of a cell's seeds stands for it in use (`served.in_use_seed`)."""
    from annlab.serve.served import in_use_seed

    runs = rows[(rows["cell"] == cell) & ~rows["diverged"].astype(bool)]
    return in_use_seed(dict(zip(runs["seed"].astype(int), runs["best_val_accuracy"], strict=True)))


def register_best(
    params: Params, rows: pd.DataFrame, headline: dict[str, Any], out: GridOutputs, run_of: dict
) -> str:
    """Register the grid's best model (once per grid) and move the alias `champion` as the
    policy says (`champion_policy`); a line saying what happened."""
    from mlflow.tracking import MlflowClient

    from annlab.track import tracking

    client = MlflowClient()
    name = params.mlflow.registered_model
    cell = headline["best_cell"]
    seed = model_seed(rows, cell)
    meta = out.metas[cell, seed]
    key = tracking.run_key(meta["cell_key"], params.grid_id())
    run = client.get_run(run_of[cell, seed])
    source_run = run.data.tags.get(tracking.REUSED_TAG, run.info.run_id)  # where the model lives
    outputs = client.get_run(source_run).outputs
    logged = [o.model_id for o in (outputs.model_outputs if outputs else [])]
    if not logged:
        return (
            f"report: registry: {cell} seed {seed}: its run {source_run} holds no model; nothing registered"
        )

    def new_version() -> Any:
        record = rows[(rows["cell"] == cell) & (rows["seed"] == seed)].iloc[0]
        tags = {
            tracking.KEY_TAG: key,
            tracking.GRID_TAG: params.grid_id(),
            tracking.CELL_TAG: cell,
            "annlab.seed": str(seed),
            "annlab.git_commit": run.data.tags.get("mlflow.source.git.commit", "unknown"),
            "annlab.dvc_stage": f"train@{cell}",
            "annlab.data_digest": meta["data_digest"],
            RAW_DIGEST_TAG: io.read_json(out.data_dir / "dataset.json").get("raw_digest", ""),
            tracking.DATASET_TAG: meta["dataset"],
            "annlab.n_test": str(int(record["n_test"])),
            "annlab.test_accuracy": f"{float(record['test_accuracy']):.6f}",
            "annlab.cell_test_accuracy": f"{headline['best_test_accuracy']:.6f}",
            "annlab.cell_test_accuracy_low": _tag_number(headline.get("best_test_accuracy_low")),
            "annlab.cell_test_accuracy_high": _tag_number(headline.get("best_test_accuracy_high")),
        }
        return client.create_model_version(
            name, f"models:/{logged[-1]}", run_id=source_run, tags=tags, model_id=logged[-1],
            description=f"{cell} seed {seed}, the best cell of grid {params.grid_id()} on {meta['dataset']}",
        )  # fmt: skip

    version, added, why = register(client, name, key, new_version)
    what = f"{name} version {version.version} ({cell} seed {seed})"
    return f"report: registry: {'registered' if added else 'already holds'} {what}; champion: {why}"


def register(client: Any, name: str, key: str, new_version: Callable[[], Any]) -> tuple[Any, bool, str]:
    """The version of registered model `name` tagged with run key `key`, made by `new_version()`
    if there is none (a rerun of a grid adds no version), and @champion moved to it if
    `champion_policy` says so; returns the version, whether it is new, and the champion's story.

    Report stages of parallel experiments (`make sweep`) register side by side: without the
    store's lock both could find no version or no champion, and add two versions or race to
    set the alias, which SQLite refuses to the loser. Stages on other machines sharing a
    tracking server are not covered by the lock; a lost race there fails the report, and its
    rerun (or `annlab sync`) registers again.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from annlab.track import tracking

    with tracking.store_lock(mlflow.get_tracking_uri()):
        try:
            client.get_registered_model(name)
        except MlflowException:  # RESOURCE_DOES_NOT_EXIST: the first grid registers it
            try:
                client.create_registered_model(
                    name, description="The best model of each annlab grid; @champion is in use."
                )
            except MlflowException as exc:  # a stage on another machine created it first
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        versions = client.search_model_versions(f"name='{name}'")
        mine = [v for v in versions if v.tags.get(tracking.KEY_TAG) == key]
        version = mine[0] if mine else new_version()
        move, why = champion_policy(client, name, version)
        if move:
            client.set_registered_model_alias(name, CHAMPION, version.version)
    return version, not mine, why


CHAMPION = "champion"
RAW_DIGEST_TAG = "annlab.raw_data_digest"  # the data the model learned from, whatever the split


def champion_policy(client: Any, name: str, new: Any) -> tuple[bool, str]:
    """Whether `new` becomes the champion, and why.

    It does when there is none, when the champion learned from other data (it serves the data
    this grid is about: another file, or the same file changed), or when the new best cell's
    mean test accuracy lies above the champion's 95 % interval (over seeds; with one seed, the
    Wilson interval of its test accuracy). A best within that interval is no evidence of a
    better model, so the champion stays: models in use do not flip with seed noise.
    """
    from mlflow.exceptions import MlflowException

    from annlab.report import confidence as conf
    from annlab.track import tracking

    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no champion yet
        return True, f"now version {new.version} (there was none)"
    if current.version == new.version:
        return False, f"stays version {current.version}"
    old_data = (current.tags.get(tracking.DATASET_TAG), current.tags.get(RAW_DIGEST_TAG))
    new_data = (new.tags.get(tracking.DATASET_TAG), new.tags.get(RAW_DIGEST_TAG))
    if old_data != new_data:
        same_name = old_data[0] == new_data[0]
        return True, (
            f"now version {new.version}: version {current.version} was trained on "
            + (f"{new_data[0]} as it was before it changed" if same_name else f"{old_data[0]}")
            + f", this grid is on {new_data[0]}"
        )
    mean = float(new.tags["annlab.cell_test_accuracy"])
    high_tag = current.tags.get("annlab.cell_test_accuracy_high")
    if high_tag:
        high = float(high_tag)
    elif current.tags.get("annlab.n_test"):  # one seed: its test set's own sampling error
        n = int(current.tags["annlab.n_test"])
        high = conf.wilson(round(float(current.tags["annlab.test_accuracy"]) * n), n)[1]
    else:
        high = float(current.tags["annlab.cell_test_accuracy"])
    if mean > high:
        return (
            True,
            f"now version {new.version}: its {mean:.4f} is above version {current.version}'s interval",
        )
    return False, (
        f"stays version {current.version}: the new best's {mean:.4f} is within its interval (up to "
        f"{high:.4f}), so nothing shows the new model is better"
    )


def _tag_number(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.6f}"


def rebuild_run(
    params: Params, row: pd.Series, meta: dict[str, Any], out: GridOutputs, exp_id: str, parent_id: str
) -> str:
    """A finished child run for a cell the store lacks, rebuilt from its DVC outputs (params,
    datasets, per-epoch curves, training time, history, summary).

    If a run in the store trained the cell (same params, data and seed) for another grid, DVC
    took the cell from its cache: the new run points at that one, which holds the model.
    Otherwise the cell was trained while MLflow was out of reach, and its model is uploaded too.
    """
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from annlab.track import tracking

    client = MlflowClient()
    cell, seed, grid_id = row["cell"], int(row["seed"]), params.grid_id()
    trained = [
        r
        for r in tracking.find_runs(exp_id, {tracking.CELL_KEY_TAG: meta["cell_key"]})
        if tracking.REUSED_TAG not in r.data.tags and r.info.status == "FINISHED"
    ]
    tags = {
        tracking.KEY_TAG: tracking.run_key(meta["cell_key"], grid_id),
        tracking.CELL_KEY_TAG: meta["cell_key"],
        tracking.ROLE_TAG: "cell",
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
    now = int(time.time() * 1000)
    history = out.histories[cell][seed]
    curves = [
        Metric(column, float(value), now, int(epoch))
        for column in ("loss", "accuracy", "val_loss", "val_accuracy")
        for epoch, value in zip(history["epoch"], history[column], strict=True)
    ]
    tracking.log_metric_points(run_id, curves)
    split = io.split_dir(out.data_dir, seed)
    arrays = {name: io.load_array(split, name) for name in ("x_train", "y_train", "x_val", "y_val")}
    splits = {
        "training": (arrays["x_train"], arrays["y_train"]),
        "validation": (arrays["x_val"], arrays["y_val"]),
    }
    logged = tracking.cell_params(params, row["model"], row["optimizer"], row["activation"], seed)
    seed_name = io.seed_name(seed)
    with mlflow.start_run(run_id=run_id):  # ends it FINISHED
        tracking.log_cell_inputs(logged, grid_id, splits, meta["dataset"])
        tracking.log_cell_outputs(
            out.models_dir / cell / seed_name,
            out.history_dir / cell / f"{seed_name}.csv",
            split,
            with_model=not trained,
        )
    return run_id


def main(argv: list[str] | None = None) -> None:
    """Write the comparison report, its CSVs and figures; file the grid in MLflow."""
    p = runtime.parser(__doc__)
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
    p.add_argument("--forest", type=Path, required=True, help="forest plot PNG: each cell's interval")
    p.add_argument("--curves-by-activation", type=Path, required=True, help="PNG, a panel per activation")
    p.add_argument("--curves-by-optimizer", type=Path, required=True, help="PNG, a panel per optimizer")
    p.add_argument(
        "--mlflow-only",
        action="store_true",
        help="write nothing: file the grid in MLflow from the outputs already written (`annlab sync`)",
    )
    args = p.parse_args(argv)
    params = load_params(args.params)

    from annlab.track import tracking

    if args.mlflow_only and tracking.offline():
        raise UserError(f"{tracking.OFFLINE_ENV} is set: unset it to upload the runs to MLflow")
    rows, timings, metas = read_rows(params, args.eval, args.models)
    histories = {cell.name: figures.read_histories(args.history / cell.name) for cell in params.cells()}
    shown = {
        "Test accuracy per cell with its 95 % interval; the best and its ties in red": args.forest,
        "Test accuracy per optimizer and activation": args.heatmap,
        "Validation curves, one panel per activation": args.curves_by_activation,
        "Validation curves, one panel per optimizer": args.curves_by_optimizer,
    }
    grid_files = [args.markdown, args.csv, args.timings, args.summary, *shown.values()]
    headline = rep.summary_metrics(rows)
    if args.mlflow_only:
        if missing := [str(path) for path in grid_files if not path.is_file()]:
            raise UserError(f"{', '.join(missing)}: missing; run `dvc repro`, which writes the report, first")
    else:
        write_report(params, rows, timings, histories, shown, args)
        io.write_json(args.summary, headline)
        print(
            f"report: {len(rows)} runs in {len(set(rows['cell']))} cells; best {headline['best_cell']};"
            f" -> {args.markdown}"
        )
    if tracking.offline():
        print(
            f"report: {tracking.OFFLINE_ENV} is set: the grid is not filed in MLflow;"
            " `annlab sync` does it later"
        )
        return
    outputs = GridOutputs(
        metas=metas,
        histories=histories,
        history_dir=args.history,
        cell_figures=args.cell_figures,
        models_dir=args.models,
        eval_dir=args.eval,
        data_dir=args.data,
        grid_files=grid_files,
    )
    log_to_mlflow(params, rows, headline, outputs)


def write_report(
    params: Params,
    rows: pd.DataFrame,
    timings: pd.DataFrame,
    histories: dict[str, dict[int, pd.DataFrame]],
    shown: dict[str, Path],
    args: Any,
) -> None:
    """Write the comparison report, its CSVs and its figures (the paths `args` names)."""
    from annlab.track.tracking import code_version

    data_name = params.data.label
    summary = rep.summarize(rows)
    figures.save(
        rep.heatmap_figure(summary, params, "test_accuracy", f"Test accuracy ({data_name})"), args.heatmap
    )
    figures.save(rep.forest_figure(summary, rep.analyze(rows), f"Test accuracy ({data_name})"), args.forest)
    figures.save(
        rep.curves_figure(histories, params, "activation", f"Validation curves per optimizer ({data_name})"),
        args.curves_by_activation,
    )
    figures.save(
        rep.curves_figure(histories, params, "optimizer", f"Validation curves per activation ({data_name})"),
        args.curves_by_optimizer,
    )
    links = {title: _relative(path, args.markdown.parent) for title, path in shown.items()}
    best = rep.analyze(rows).best
    evaluation = io.read_json(args.eval / f"{best}.json") if best else None
    io.write_text(
        args.markdown, rep.comparison_markdown(params, rows, timings, code_version(), links, evaluation)
    )
    io.write_text(args.csv, rep.rows_csv(rows))
    io.write_text(args.timings, timings.to_csv(index=False, lineterminator="\n", float_format="%.3f"))


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


if __name__ == "__main__":
    runtime.run(main)
