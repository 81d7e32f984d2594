"""End to end: `dvc repro` in a temporary copy of the repo on small data, checked file by file
and run by run through MlflowClient against a temporary store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO

pytestmark = pytest.mark.slow

CELLS = ["sgd-relu", "sgd-tanh", "adam-relu", "adam-tanh"]
EPOCHS = 2


def _dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # Every dvc call of this module logs to the pipeline's own store (the per-test store of
    # conftest would split one pipeline's runs across stores).
    # The stages call `python` by name: make it this interpreter's, as `make` does with .venv/bin.
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "MLFLOW_TRACKING_URI": _store_uri(repo),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    dvc = Path(bin_dir) / "dvc"
    proc = subprocess.run([str(dvc), *args], cwd=repo, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _store_uri(repo: Path) -> str:
    return f"sqlite:///{repo.parent / (repo.name + '-mlflow') / 'mlflow.db'}"


def _ran(proc: subprocess.CompletedProcess[str]) -> set[str]:
    return {line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")}


def _snapshot(repo: Path) -> dict[str, bytes]:
    """Every pipeline output, except the validation stamp (cleared when params go bad)."""
    return {
        str(p.relative_to(repo)): p.read_bytes()
        for top in ("data", "models", "reports")
        for p in sorted((repo / top).rglob("*"))
        if p.is_file() and p.name != "params.ok"
    }


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A copy of the repo with small params, after one `dvc repro`."""
    repo = tmp_path_factory.mktemp("repo")
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["subset"] = 400
    params["train"]["epochs"] = EPOCHS
    params["grid"] = {"optimizer": ["sgd", "adam"], "activation": ["relu", "tanh"]}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo.parent / f"{repo.name}-mlflow").mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    _dvc(repo, "config", "core.analytics", "false")
    git = ["git", "-c", "user.name=annlab-test", "-c", "user.email=test@annlab.invalid"]
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "small pipeline"], cwd=repo, check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    first = _dvc(repo, "repro")
    return {"repo": repo, "uri": _store_uri(repo), "first": first, "commit": commit}


def _runs(uri: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("annlab")
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_stages_are_named_per_cell(pipeline: dict) -> None:
    expected = {"validate", "fetch", "preprocess"} | {
        f"{stage}@{cell}" for stage in ("train", "evaluate", "plot") for cell in CELLS
    }
    assert _ran(pipeline["first"]) == expected


def test_every_output_is_written(pipeline: dict) -> None:
    repo: Path = pipeline["repo"]
    info = json.loads((repo / "data/processed/dataset.json").read_text())
    assert sum(info["sizes"].values()) == 400
    for cell in CELLS:
        assert (repo / f"models/{cell}/model.keras").stat().st_size > 0
        history = (repo / f"reports/history/{cell}.csv").read_text().splitlines()
        assert history[0] == "epoch,loss,accuracy,val_loss,val_accuracy"
        assert len(history) == 1 + EPOCHS
        metrics = json.loads((repo / f"reports/metrics/{cell}.json").read_text())
        assert {"test_accuracy", "test_loss", "macro_f1", "macro_precision", "macro_recall"} <= set(metrics)
        assert 0 <= metrics["test_accuracy"] <= 1
        assert metrics["n_test"] == info["sizes"]["test"]
        report = json.loads((repo / f"reports/eval/{cell}.json").read_text())
        assert sum(map(sum, report["confusion_matrix"])) == info["sizes"]["test"]
        predictions = (repo / f"reports/predictions/{cell}.csv").read_text().splitlines()
        assert len(predictions) == 1 + info["sizes"]["test"]
        for png in ("curves.png", "confusion_matrix.png"):
            assert (repo / f"reports/figures/{cell}/{png}").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_adam_beats_chance_even_on_small_data(pipeline: dict) -> None:
    metrics = json.loads((pipeline["repo"] / "reports/metrics/adam-relu.json").read_text())
    assert metrics["test_accuracy"] > 0.2  # 10 classes: chance is 0.1; 2 short epochs


def test_one_mlflow_run_per_cell_with_everything(pipeline: dict) -> None:
    repo, uri = pipeline["repo"], pipeline["uri"]
    runs = _runs(uri)
    assert sorted(r.info.run_name for r in runs) == sorted(CELLS)
    client = MlflowClient(uri)
    for run in runs:
        cell = run.info.run_name
        optimizer, activation = cell.split("-")
        assert run.info.status == "FINISHED"
        assert run.data.params["optimizer"] == optimizer
        assert run.data.params["activation"] == activation
        assert run.data.params["train.epochs"] == str(EPOCHS)
        assert run.data.tags["annlab.stage"] == f"train@{cell}"
        assert run.data.tags["annlab.dataset"] == "digits"
        assert run.data.tags["mlflow.source.git.commit"] == pipeline["commit"]
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == list(range(1, EPOCHS + 1))
        csv_last = (repo / f"reports/history/{cell}.csv").read_text().splitlines()[-1].split(",")
        assert run.data.metrics["val_accuracy"] == pytest.approx(float(csv_last[4]))
        metrics = json.loads((repo / f"reports/metrics/{cell}.json").read_text())
        for key in ("test_accuracy", "test_loss", "macro_f1"):
            assert run.data.metrics[key] == metrics[key]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert artifacts == {"plots/curves.png", "plots/confusion_matrix.png"}
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
            "history",
            "evaluation",
            "model_summary.txt",
        }
        assert [a.path for a in client.list_artifacts(run.info.run_id, "history")] == [f"history/{cell}.csv"]
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
        signature = mlflow.models.Model.load(mlmodel).signature
        assert list(signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 64]
        assert list(signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 10]
        assert "optimizers.adam.learning_rate" not in run.data.params or optimizer == "adam"


def test_dvc_metrics_and_plots_show_every_cell(pipeline: dict) -> None:
    repo: Path = pipeline["repo"]
    metrics = json.loads(_dvc(repo, "metrics", "show", "--json").stdout)
    (workspace,) = metrics.values()  # keyed by revision; the workspace's key is ""
    shown = workspace["data"]
    for cell in CELLS:
        expected = json.loads((repo / f"reports/metrics/{cell}.json").read_text())
        assert shown[f"reports/metrics/{cell}.json"]["data"] == expected
    plots = json.loads(_dvc(repo, "plots", "show", "--json").stdout)
    assert not plots.get("errors")
    for cell in CELLS:
        for path in (f"reports/history/{cell}.csv", f"reports/predictions/{cell}.csv"):
            assert plots["data"][path], f"dvc plots show draws nothing for {path}"


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
    assert (repo / "data/params.ok").exists()
    assert json.loads(_dvc(repo, "status", "--json").stdout) == {}


def test_rerun_reproduces_metrics_and_replaces_the_run(pipeline: dict) -> None:
    repo, uri = pipeline["repo"], pipeline["uri"]
    metrics = (repo / "reports/metrics/adam-relu.json").read_bytes()
    history = (repo / "reports/history/adam-relu.csv").read_bytes()
    forced = _dvc(repo, "repro", "--force", "--single-item", "train@adam-relu")
    assert _ran(forced) == {"train@adam-relu"}
    _dvc(repo, "repro")
    assert (repo / "reports/metrics/adam-relu.json").read_bytes() == metrics
    assert (repo / "reports/history/adam-relu.csv").read_bytes() == history
    runs = [r for r in _runs(uri) if r.info.run_name == "adam-relu"]
    assert len(runs) == 1, "rerunning a cell on the same inputs must not leave a duplicate run"


def test_editing_epochs_reruns_only_training_and_after(pipeline: dict) -> None:
    repo: Path = pipeline["repo"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["epochs"] = EPOCHS + 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = _dvc(repo, "repro")
    ran = _ran(proc)
    assert {"fetch", "preprocess"}.isdisjoint(ran)
    assert {f"{s}@{c}" for s in ("train", "evaluate", "plot") for c in CELLS} <= ran
    assert len((repo / "reports/history/sgd-tanh.csv").read_text().splitlines()) == 2 + EPOCHS
