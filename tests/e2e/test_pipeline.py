"""End to end: `dvc repro` in a temporary copy of the repo on small data, checked file by file
and run by run through MlflowClient against a temporary store."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import default_sigint, dvc, repro, small_repo

pytestmark = pytest.mark.slow

# A grid spanning two architectures: the tutorial's ANN and a small CNN.
CELLS = ["ann-sgd-relu", "ann-adam-relu", "cnn-sgd-relu", "cnn-adam-relu"]
EPOCHS = 2
LABELS = {"ann": "ann 64-32", "cnn": "cnn 8-16 / 64-32"}


def _dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # Every dvc call of this module logs to the pipeline's own store (the per-test store of
    # conftest would split one pipeline's runs across stores).
    return dvc(repo, *args, store=_store_uri(repo), check=check)


def _store_uri(repo: Path) -> str:
    return f"sqlite:///{repo.parent / (repo.name + '-mlflow') / 'mlflow.db'}"


def _ran(proc: subprocess.CompletedProcess[str]) -> set[str]:
    return {line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")}


def _snapshot(repo: Path) -> dict[str, bytes]:
    """Every pipeline output, except the validate stage's: its stamp and the resolved tuning
    (cleared when params go bad)."""
    return {
        str(p.relative_to(repo)): p.read_bytes()
        for top in ("data", "models", "reports")
        for p in sorted((repo / top).rglob("*"))
        if p.is_file() and p.name not in ("params.ok", "tuning.yaml")
    }


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A copy of the repo with small params, after one `make repro` (JOBS=2)."""
    repo = tmp_path_factory.mktemp("repo")

    def small(params: dict) -> None:
        params["data"]["subset"] = 400
        params["train"]["epochs"] = EPOCHS
        params["model"]["cnn"]["filters"] = [8, 16]
        params["grid"] = {
            "model": ["ann", "cnn"],
            "optimizer": ["sgd", "adam"],
            "activation": ["relu"],
            "seeds": None,
        }

    commit = small_repo(repo, small)
    (repo.parent / f"{repo.name}-mlflow").mkdir()
    # As `make repro` runs it: the grid's cells two at a time, sharing one parent run.
    first = repro(repo, 2, _store_uri(repo))
    return {"repo": repo, "uri": _store_uri(repo), "first": first, "commit": commit}


def _runs(uri: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("annlab")
    return client.search_runs([exp.experiment_id], max_results=1000)


def _grid(uri: str, repo: Path) -> tuple:
    """The parent run of the repo's current grid and its children."""
    from annlab.params import load_params

    grid_id = load_params(repo / "params.yaml").grid_id()
    runs = [r for r in _runs(uri) if r.data.tags.get("annlab.grid") == grid_id]
    (parent,) = [r for r in runs if r.data.tags.get("annlab.role") == "grid"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


def test_stages_are_named_per_cell(pipeline: dict) -> None:
    expected = {"validate", "fetch", "preprocess", "evaluate", "plot", "report"}
    # The cells ran on the executor's warm workers, not as cold stage commands.
    assert _ran(pipeline["first"]) == expected
    assert "executor: local, 2 workers" in pipeline["first"].stdout
    for cell in CELLS:
        assert f"] {cell} " in pipeline["first"].stdout
    assert "trained 4, restored 0 from cache, failed 0" in pipeline["first"].stdout


def test_every_output_is_written(pipeline: dict) -> None:
    repo: Path = pipeline["repo"]
    info = json.loads((repo / "data/processed/dataset.json").read_text())
    assert sum(info["sizes"].values()) == 400
    for cell in CELLS:
        assert (repo / f"models/{cell}/seed-42/model.keras").stat().st_size > 0
        history = (repo / f"reports/history/{cell}/seed-42.csv").read_text().splitlines()
        assert history[0] == "epoch,loss,accuracy,val_loss,val_accuracy"
        assert len(history) == 1 + EPOCHS
        metrics = json.loads((repo / f"reports/metrics/{cell}.json").read_text())
        assert {"test_accuracy", "test_loss", "macro_f1", "macro_precision", "macro_recall"} <= set(metrics)
        assert 0 <= metrics["test_accuracy"] <= 1
        assert (metrics["n_test"], metrics["seeds"], metrics["diverged"]) == (info["sizes"]["test"], 1, 0)
        report = json.loads((repo / f"reports/eval/{cell}.json").read_text())
        assert sum(map(sum, report["confusion_matrix"])) == info["sizes"]["test"]
        predictions = (repo / f"reports/predictions/{cell}.csv").read_text().splitlines()
        assert len(predictions) == 1 + info["sizes"]["test"]
        for png in ("curves.png", "confusion_matrix.png"):
            assert (repo / f"reports/figures/cells/{cell}/{png}").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("accuracy_heatmap", "val_curves_by_activation", "val_curves_by_optimizer"):
        assert (repo / f"reports/figures/{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (repo / "reports/comparison.md").read_text().startswith("# Which architecture, optimizer")


def test_adam_beats_chance_even_on_small_data(pipeline: dict) -> None:
    metrics = json.loads((pipeline["repo"] / "reports/metrics/ann-adam-relu.json").read_text())
    assert metrics["test_accuracy"] > 0.2  # 10 classes: chance is 0.1; 2 short epochs


def test_report_equals_the_per_cell_metrics(pipeline: dict) -> None:
    repo: Path = pipeline["repo"]
    table = pd.read_csv(repo / "reports/comparison.csv")
    assert list(table["cell"]) == CELLS
    markdown = (repo / "reports/comparison.md").read_text()
    accuracy = markdown.split("## Test accuracy\n\n", 1)[1].split("\n## ", 1)[0]
    best = max(
        CELLS, key=lambda c: json.loads((repo / f"reports/metrics/{c}.json").read_text())["test_accuracy"]
    )
    for cell, row in zip(CELLS, table.itertuples(), strict=True):
        metrics = json.loads((repo / f"reports/metrics/{cell}.json").read_text())
        for key in ("test_accuracy", "test_loss", "macro_f1", "best_val_accuracy"):
            assert getattr(row, key) == metrics[key]
        model, optimizer, _ = cell.split("-")
        assert (row.model, row.optimizer, row.activation) == tuple(cell.split("-"))
        shown = f"{metrics['test_accuracy']:.4f}"
        # One optimizer x activation table per architecture, under the network's label.
        table_of = accuracy.split(f"### {LABELS[model]}\n\n", 1)[1].split("\n\n", 1)[0]
        line = next(li for li in table_of.splitlines() if li.startswith(f"| {optimizer} "))
        assert line.strip("|").split("|")[1].strip() in (shown, f"**{shown}**")
    architectures = markdown.split("## Architectures\n\n", 1)[1].split("\n## ", 1)[0]
    for model, label in LABELS.items():
        n_params = json.loads((repo / f"models/{model}-adam-relu/seed-42/meta.json").read_text())["n_params"]
        assert f"| {label} " in architectures and f"{n_params:,}" in architectures
    assert f"**Best: {best}**" in markdown
    summary = json.loads((repo / "reports/summary.json").read_text())
    assert summary["best_cell"] == best
    assert set(summary["by_model"]) == set(LABELS)
    assert summary["by_model"][best.split("-")[0]]["best_cell"] == best
    assert f"git commit `{pipeline['commit'][:12]}`" in markdown


def test_one_mlflow_run_per_cell_under_one_grid_run(pipeline: dict) -> None:
    repo, uri = pipeline["repo"], pipeline["uri"]
    parent, runs = _grid(uri, repo)
    assert len(_runs(uri)) == 1 + len(CELLS)
    assert sorted(r.info.run_name for r in runs) == sorted(CELLS)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["grid.optimizer"] == "sgd,adam"
    assert (parent.data.params["grid.model"], parent.data.params["model"]) == ("ann,cnn", "ann+cnn")
    client = MlflowClient(uri)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {
        "report/comparison.md",
        "report/comparison.csv",
        "report/accuracy_heatmap.png",
        "report/val_curves_by_activation.png",
        "report/val_curves_by_optimizer.png",
    }
    for run in runs:
        cell = run.info.run_name
        model, optimizer, activation = cell.split("-")
        assert run.info.status == "FINISHED"
        assert (run.data.params["model_type"], run.data.params["model.type"]) == (model, model)
        meta = json.loads((repo / f"models/{cell}/seed-42/meta.json").read_text())
        assert run.data.metrics["n_params"] == meta["n_params"] > 0
        summary = Path(
            mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path="model_summary.txt", tracking_uri=uri
            )
        ).read_text()
        assert ("conv_2" in summary) == (model == "cnn") and f"{meta['n_params']:,}" in summary
        assert run.data.params["optimizer"] == optimizer
        assert run.data.params["activation"] == activation
        assert run.data.params["dataset"] == "digits"
        assert run.data.params["grid_id"] == parent.data.tags["annlab.grid"]
        assert run.data.params["train.epochs"] == str(EPOCHS)
        assert run.data.tags["annlab.stage"] == f"train@{cell}"
        assert run.data.tags["annlab.dataset"] == "digits"
        assert run.data.tags["mlflow.source.git.commit"] == pipeline["commit"]
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == list(range(1, EPOCHS + 1))
        csv_last = (repo / f"reports/history/{cell}/seed-42.csv").read_text().splitlines()[-1].split(",")
        assert run.data.metrics["val_accuracy"] == pytest.approx(float(csv_last[4]))
        metrics = json.loads((repo / f"reports/metrics/{cell}.json").read_text())
        for key in ("test_accuracy", "test_loss", "macro_f1"):
            assert run.data.metrics[key] == metrics[key]
        # The report logs test metrics later; the run's duration stays its training's.
        (tested,) = client.get_metric_history(run.info.run_id, "test_accuracy")
        assert run.info.end_time < tested.timestamp
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert artifacts == {"plots/curves.png", "plots/confusion_matrix.png"}
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
            "history",
            "evaluation",
            "model_summary.txt",
        }
        assert [a.path for a in client.list_artifacts(run.info.run_id, "history")] == ["history/seed-42.csv"]
        assert {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")} == {
            "evaluation/" + f"{cell}.json"
        }
        contexts = {i.tags[0].value for i in run.inputs.dataset_inputs}
        assert contexts == {"training", "validation", "testing"}
        assert all(i.dataset.digest for i in run.inputs.dataset_inputs)
        models = client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
        assert len(models) == 1
        assert models[0].name == "model"
        # Read the MLmodel file straight from the model's artifacts (no global tracking URI).
        mlmodel = mlflow.artifacts.download_artifacts(artifact_uri=f"{models[0].artifact_location}/MLmodel")
        logged = mlflow.models.Model.load(mlmodel)
        signature = logged.signature
        # Raw pixels in, in either layout (the model checks them: MLflow's tensor spec fixes the
        # rank), not the scaled features; class names out.
        assert signature.inputs is None
        assert logged.metadata["annlab_inputs"].startswith("an array of shape (n, 8, 8) of pixel values")
        assert signature.outputs.input_names() == ["predicted", *[f"p({d})" for d in range(10)]]
        assert "optimizers.adam.learning_rate" not in run.data.params or optimizer == "adam"


def test_dvc_metrics_and_plots_show_every_cell(pipeline: dict) -> None:
    repo: Path = pipeline["repo"]
    metrics = json.loads(_dvc(repo, "metrics", "show", "--json").stdout)
    (workspace,) = metrics.values()  # keyed by revision; the workspace's key is ""
    shown = workspace["data"]
    for path in [f"reports/metrics/{cell}.json" for cell in CELLS] + ["reports/summary.json"]:
        data = json.loads((repo / path).read_text())
        # DVC shows numbers and mappings; a list (tied_with_best) is no metric to it
        assert shown[path]["data"] == {k: v for k, v in data.items() if not isinstance(v, list)}
    plots = json.loads(_dvc(repo, "plots", "show", "--json").stdout)
    assert not plots.get("errors")
    for cell in CELLS:
        for path in (f"reports/history/{cell}/seed-42.csv", f"reports/predictions/{cell}.csv"):
            assert plots["data"][path], f"dvc plots show draws nothing for {path}"
    assert plots["data"]["reports/figures/accuracy_heatmap.png"]
    assert plots["data"]["reports/figures/forest_plot.png"]


def test_second_repro_is_a_noop_and_status_is_clean(pipeline: dict) -> None:
    again = _dvc(pipeline["repo"], "repro")
    assert _ran(again) == set()
    status = _dvc(pipeline["repo"], "status", "--json")
    assert json.loads(status.stdout) == {}


def test_bad_params_stop_before_any_output_changes(pipeline: dict) -> None:
    repo: Path = pipeline["repo"]
    good = (repo / "params.yaml").read_text()
    before = _snapshot(repo)
    bad = yaml.safe_load(good)
    bad["train"]["epochs"] = 0
    bad["optimizers"]["sgd"]["learning_rate"] = -1
    (repo / "params.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
    try:
        proc = _dvc(repo, "repro", check=False)
    finally:
        (repo / "params.yaml").write_text(good)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "train.epochs" in output and "optimizers.sgd.learning_rate" in output
    assert _ran(proc) == {"validate"}
    assert _snapshot(repo) == before
    # Back to good params: the stamp returns (DVC may restore it from its run cache) and
    # nothing else reruns.
    assert _ran(_dvc(repo, "repro")) <= {"validate"}
    assert (repo / "data/params.ok").exists() and (repo / "data/tuning.yaml").exists()
    assert json.loads(_dvc(repo, "status", "--json").stdout) == {}


def test_rerun_reproduces_metrics_and_replaces_the_run(pipeline: dict) -> None:
    repo, uri = pipeline["repo"], pipeline["uri"]
    outputs = [
        "reports/metrics/ann-adam-relu.json",
        "reports/history/ann-adam-relu/seed-42.csv",
        "reports/comparison.csv",
    ]
    before = {path: (repo / path).read_bytes() for path in outputs}
    tables = (repo / "reports/comparison.md").read_text().split("## Training time")[0]
    forced = _dvc(repo, "repro", "--force", "--single-item", "train@ann-adam-relu")
    assert _ran(forced) == {"train@ann-adam-relu"}
    _dvc(repo, "repro")
    assert {path: (repo / path).read_bytes() for path in outputs} == before
    assert (repo / "reports/comparison.md").read_text().split("## Training time")[0] == tables
    _, children = _grid(uri, repo)
    runs = [r for r in _runs(uri) if r.info.run_name == "ann-adam-relu"]
    assert len(runs) == 1, "rerunning a cell on the same inputs must not leave a duplicate run"
    assert runs[0].info.run_id in {r.info.run_id for r in children}
    assert runs[0].data.metrics["test_accuracy"] == json.loads(before[outputs[0]])["test_accuracy"]


def test_a_cell_reused_from_the_cache_joins_the_new_grid(pipeline: dict) -> None:
    repo, uri = pipeline["repo"], pipeline["uri"]
    old_parent, old_children = _grid(uri, repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    # Each cell depends on its own optimizer's and its own architecture's section only.
    params["optimizers"]["sgd"]["learning_rate"] = 0.05
    params["model"]["cnn"]["kernel_size"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = _ran(_dvc(repo, "repro"))
    retrained = {"ann-sgd-relu", "cnn-sgd-relu", "cnn-adam-relu"}
    assert ran == {"validate", "evaluate", "plot", "report"} | {f"train@{c}" for c in retrained}
    parent, children = _grid(uri, repo)
    assert parent.info.run_id != old_parent.info.run_id
    assert sorted(r.info.run_name for r in children) == sorted(CELLS)
    trained = {r.info.run_name: r.info.run_id for r in old_children}
    trained_runs = {r.info.run_name: r for r in old_children}
    for run in children:
        if run.info.run_name not in retrained:  # rebuilt from DVC outputs
            assert run.data.tags["annlab.reused_from"] == trained[run.info.run_name]
            assert run.data.metrics["n_params"] == trained_runs[run.info.run_name].data.metrics["n_params"]
            names = {a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id)}
            assert "model_summary.txt" in names
            history = MlflowClient(uri).get_metric_history(run.info.run_id, "val_accuracy")
            assert [m.step for m in history] == list(range(1, EPOCHS + 1))
            metrics = json.loads((repo / f"reports/metrics/{run.info.run_name}.json").read_text())
            assert run.data.metrics["test_accuracy"] == metrics["test_accuracy"]
        else:
            assert "annlab.reused_from" not in run.data.tags
            model, optimizer, _ = run.info.run_name.split("-")
            assert (run.data.params.get("optimizers.sgd.learning_rate") == "0.05") == (optimizer == "sgd")
            assert (run.data.params.get("model.cnn.kernel_size") == "2") == (model == "cnn")
    # The old grid keeps all its runs.
    still = [r for r in _runs(uri) if r.data.tags.get("mlflow.parentRunId") == old_parent.info.run_id]
    assert {r.info.run_id for r in still} == {r.info.run_id for r in old_children}


def test_three_seeds_give_each_its_split_intervals_and_a_tie_group(pipeline: dict) -> None:
    repo, uri = pipeline["repo"], pipeline["uri"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["epochs"] = EPOCHS + 1
    params["grid"]["seeds"] = [1, 2, 3]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = _dvc(repo, "repro")
    ran = _ran(proc)
    assert "fetch" not in ran
    # data.split_per_seed: each seed draws its own split, so preprocess reruns
    assert {"preprocess", "evaluate", "plot", "report"} | {f"train@{c}" for c in CELLS} <= ran
    for seed in (1, 2, 3):
        assert (
            len((repo / f"reports/history/cnn-sgd-relu/seed-{seed}.csv").read_text().splitlines())
            == 2 + EPOCHS
        )
    metrics = json.loads((repo / "reports/metrics/cnn-adam-relu.json").read_text())
    per_seed = [
        s["test_accuracy"]
        for s in json.loads((repo / "reports/eval/cnn-adam-relu.json").read_text())["seeds"]
    ]
    assert metrics["seeds"] == 3
    assert metrics["test_accuracy"] == pytest.approx(sum(per_seed) / 3)
    markdown = (repo / "reports/comparison.md").read_text()
    rows = pd.read_csv(repo / "reports/comparison.csv")
    assert len(rows) == 3 * len(CELLS)
    # The report opens with the tie group, which summary.json and MLflow repeat.
    summary = json.loads((repo / "reports/summary.json").read_text())
    best, tied = summary["best_cell"], summary["tied_with_best"]
    headline = markdown.split("\n\n")[1]
    assert headline.startswith(f"**Best: {best}**, test accuracy ")
    assert (f"Tied with it: {', '.join(tied)}." if tied else "No other cell is tied with it.") in headline
    assert set(summary["verdicts"]) == set(CELLS) and summary["verdicts"][best] == "best"
    assert (repo / "reports/figures/forest_plot.png").stat().st_size > 0
    parent, children = _grid(uri, repo)
    names = sorted(f"{c} seed={s}" for c in CELLS for s in (1, 2, 3))
    assert sorted(r.info.run_name for r in children) == names
    assert parent.data.tags["annlab.tied_with_best"] == (",".join(tied) or "none")
    for run in children:
        cell = run.data.tags["annlab.cell"]
        assert run.data.tags["annlab.verdict"] == summary["verdicts"][cell]
        assert run.data.metrics["test_accuracy_ci_low"] <= run.data.metrics["test_accuracy_ci_high"]
    # Per-seed splits: one training set per seed, shared by every cell of that seed.
    digests: dict[str, set[str]] = {}
    for run in children:
        (training,) = [i.dataset.digest for i in run.inputs.dataset_inputs if i.tags[0].value == "training"]
        digests.setdefault(run.data.params["seed"], set()).add(training)
    assert all(len(d) == 1 for d in digests.values()) and len(set.union(*digests.values())) == 3


def test_a_cell_killed_mid_training_is_trained_again_by_the_next_repro(pipeline: dict) -> None:
    """Ctrl-C on `dvc repro` (SIGINT to its process group) mid-epoch: nothing half-written,
    the run is KILLED in MLflow, and the next `dvc repro` completes the grid."""
    import os
    import signal
    import sys
    import time

    repo, uri = pipeline["repo"], pipeline["uri"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["epochs"] = 60  # long enough to be mid-training when the signal comes
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.update(MLFLOW_TRACKING_URI=uri, PYTHONUNBUFFERED="1")
    argv = [str(Path(sys.executable).parent / "dvc"), "repro", "--single-item", "train@ann-sgd-relu"]
    proc = subprocess.Popen(
        argv,
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=default_sigint,
    )
    assert proc.stdout is not None
    started = time.monotonic()
    for line in proc.stdout:
        if line.startswith("Epoch 3/"):
            break
        assert time.monotonic() - started < 300, "training never started"  # hang guard
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert not (repo / "models/ann-sgd-relu").exists()  # the old model went stale; no new one
    assert not list((repo / "models").glob(".ann-sgd-relu.*"))
    stale = json.loads(_dvc(repo, "status", "--json").stdout)
    assert "train@ann-sgd-relu" in stale
    # The first seed's run was killed; a later seed's never began.
    from annlab.params import load_params
    from annlab.track.tracking import cell_run_name

    seeds = load_params(repo / "params.yaml").seeds
    killed = [
        r for r in _runs(uri) if r.info.run_name.startswith("ann-sgd-relu") and r.info.status == "KILLED"
    ]
    assert [r.info.run_name for r in killed] == [cell_run_name("ann-sgd-relu", seeds[0], seeds)]

    rest = repro(repo, 2, uri)
    assert "trained 4, restored 0 from cache, failed 0" in rest.stdout
    assert {"evaluate", "plot", "report"} <= _ran(rest)
    assert json.loads(_dvc(repo, "status", "--json").stdout) == {}
    metrics = json.loads((repo / "reports/metrics/ann-sgd-relu.json").read_text())
    assert (metrics["epochs_run"], metrics["seeds"]) == (60, len(seeds))
    # The killed run stays visible as such beside the one that finished.
    statuses = sorted(r.info.status for r in _runs(uri) if r.info.run_name.startswith("ann-sgd-relu"))
    assert "KILLED" in statuses and "FINISHED" in statuses
