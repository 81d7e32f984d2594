"""Model tests: a small grid run stage by stage (no DVC) in which one cell diverges: the
diverged cell is a result in its metrics, its MLflow runs and the report, and the rest of the
grid completes. Two seeds per cell, so the report's mean ± std is exercised end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from annlab.report import figures
from annlab.stages import evaluate, plot, report, train
from conftest import processed_blobs

CELLS = ["ann-sgd-relu", "ann-adam-relu"]
SEEDS = [1, 2]
EPOCHS = 3


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every stage of a 2-cell grid, in one process: plain SGD with a learning rate of 10 on
    features of order 1e18 overflows to NaN within an epoch; Adam's steps are bounded."""
    root = tmp_path_factory.mktemp("grid")
    store = f"sqlite:///{root / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", store)
    params = {
        "train": {"epochs": EPOCHS, "batch_size": 16},
        "optimizers": {"sgd": {"learning_rate": 10.0}},
        "grid": {"optimizer": ["sgd", "adam"], "activation": ["relu"], "seeds": SEEDS},
        "mlflow": {"experiment": "divergence"},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    processed_blobs(root / "data", scale=1e18)

    def run(stage: object, *options: str, **paths: str) -> None:
        argv = ["--params", str(root / "params.yaml"), *options]
        for option, path in paths.items():
            argv += [f"--{option.replace('_', '-')}", str(root / path)]
        stage.main(argv)  # type: ignore[attr-defined]

    for cell in CELLS:
        model, optimizer, activation = cell.split("-")
        run(
            train,
            *("--model", model, "--optimizer", optimizer, "--activation", activation),
            data="data",
            model_dir=f"models/{cell}",
            history=f"history/{cell}",
        )
    run(evaluate, models="models", data="data", metrics="metrics", eval="eval", predictions="predictions")
    run(plot, history="history", eval="eval", out="figures/cells")
    run(
        report,
        data="data",
        eval="eval",
        history="history",
        models="models",
        cell_figures="figures/cells",
        markdown="comparison.md",
        csv="comparison.csv",
        timings="timings.csv",
        summary="summary.json",
        heatmap="figures/heatmap.png",
        forest="figures/forest.png",
        curves_by_activation="figures/by_activation.png",
        curves_by_optimizer="figures/by_optimizer.png",
    )
    yield {"root": root, "store": store}
    mp.undo()


def test_a_diverged_cell_stops_early_and_says_so(grid: dict) -> None:
    root: Path = grid["root"]
    for seed in SEEDS:
        meta = json.loads((root / f"models/ann-sgd-relu/seed-{seed}/meta.json").read_text())
        assert meta["diverged"] is True
        assert meta["epochs_run"] == meta["diverged_epoch"] < EPOCHS
        history = (root / f"history/ann-sgd-relu/seed-{seed}.csv").read_text()
        assert "nan" in history.splitlines()[-1]
    metrics = json.loads((root / "metrics/ann-sgd-relu.json").read_text())
    assert (metrics["seeds"], metrics["diverged"]) == (2, 2)
    assert metrics["test_accuracy"] is None  # NaN weights: no made-up score
    assert (root / "figures/cells/ann-sgd-relu/curves.png").stat().st_size > 0


def test_the_rest_of_the_grid_completes(grid: dict) -> None:
    root: Path = grid["root"]
    metrics = json.loads((root / "metrics/ann-adam-relu.json").read_text())
    assert (metrics["seeds"], metrics["diverged"]) == (2, 0)
    assert metrics["test_accuracy"] > 0.5
    seeds = json.loads((root / "eval/ann-adam-relu.json").read_text())["seeds"]
    per_seed = [s["test_accuracy"] for s in seeds]
    assert metrics["test_accuracy"] == pytest.approx(np.mean(per_seed))
    assert metrics["test_accuracy_std"] == pytest.approx(np.std(per_seed, ddof=1))


def test_the_report_marks_the_diverged_cell(grid: dict) -> None:
    root: Path = grid["root"]
    markdown = (root / "comparison.md").read_text()
    assert "| sgd         | diverged (2/2)" in markdown
    assert "**Best: ann-adam-relu**" in markdown
    for seed in SEEDS:
        assert f"- ann-sgd-relu seed {seed}: loss not finite at epoch" in markdown
    summary = json.loads((root / "summary.json").read_text())
    assert (summary["best_cell"], summary["diverged_runs"], summary["runs"]) == ("ann-adam-relu", 2, 4)


def test_mlflow_marks_diverged_runs_and_groups_the_grid(grid: dict) -> None:
    client = MlflowClient(grid["store"])
    exp = client.get_experiment_by_name("divergence")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("annlab.role") == "grid"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(f"{c} seed={s}" for c in CELLS for s in SEEDS)
    for run in children:
        diverged = run.data.params["optimizer"] == "sgd"
        assert run.info.status == "FINISHED"
        assert run.data.tags["annlab.diverged"] == str(diverged).lower()
        assert run.data.metrics["diverged"] == float(diverged)
        assert ("test_accuracy" in run.data.metrics) != diverged
        models = client.search_logged_models(
            [exp.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
        assert len(models) == (0 if diverged else 1)  # no model worth serving from NaN weights
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["annlab.best_cell"] == "ann-adam-relu"
    assert parent.data.metrics["diverged_runs"] == 2
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {
        "report/comparison.md",
        "report/comparison.csv",
        "report/heatmap.png",
    }


def test_a_meta_without_a_parameter_count_is_explained(grid: dict, tmp_path: Path) -> None:
    import shutil

    from annlab.errors import UserError
    from annlab.params import load_params

    root: Path = grid["root"]
    shutil.copytree(root / "models", tmp_path / "models")
    meta_path = tmp_path / "models/ann-adam-relu/seed-1/meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["n_params"]  # as an older annlab wrote it
    meta_path.write_text(json.dumps(meta))
    params = load_params(root / "params.yaml")
    with pytest.raises(
        UserError, match=r"seed-1/meta.json: no n_params .*`dvc repro --force train@ann-adam-relu`"
    ):
        histories = {c.name: figures.read_histories(root / "history" / c.name) for c in params.cells()}
        report.read_rows(params, root / "eval", tmp_path / "models", histories)
