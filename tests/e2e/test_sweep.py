"""End to end: a queued sweep (`dvc exp run --queue -S key=a,b`, `dvc queue start -j 2`) on tiny
data. Both experiments run in DVC's temporary workspaces, in parallel, and must land in the one
MLflow store at the repository root, each as its own grid; `dvc exp show` lists them."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import dvc, small_repo

pytestmark = pytest.mark.slow

RATES = ["0.01", "0.002"]


def _wait_for_queue(repo: Path, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = dvc(repo, "queue", "status", store=None).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"the queue did not finish in {timeout} s:\n{status}")
        time.sleep(5)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Two queued experiments over Adam's learning rate, run two at a time, default store."""
    repo = tmp_path_factory.mktemp("sweep")

    def tiny(params: dict) -> None:
        params["data"]["subset"] = 200
        params["train"]["epochs"] = 1
        params["grid"] = {"model": ["ann"], "optimizer": ["adam"], "activation": ["relu"], "seeds": None}

    small_repo(repo, tiny)
    sweep = f"optimizers.adam.learning_rate={','.join(RATES)}"  # one experiment per value
    queued = dvc(repo, "exp", "run", "--queue", "-S", sweep, store=None)
    dvc(repo, "queue", "start", "-j", "2", store=None)
    status = _wait_for_queue(repo)
    for task in re.findall(r"^(\w+)\s.*\bFailed\s*$", status, flags=re.M):  # why, in the failure's message
        logs = dvc(repo, "queue", "logs", task, store=None, check=False)
        status += f"\n--- dvc queue logs {task}:\n{logs.stdout}{logs.stderr}"
    yield {"repo": repo, "queued": queued.stdout, "status": status}
    dvc(repo, "queue", "stop", store=None, check=False)  # no idle worker outlives the tests


def test_both_experiments_succeed(sweep: dict) -> None:
    assert sweep["queued"].count("Queued experiment") == 2, sweep["queued"]
    assert sweep["status"].count("Success") == 2, sweep["status"]
    assert "Failed" not in sweep["status"]


def test_every_run_lands_in_the_one_store_at_the_root(sweep: dict) -> None:
    repo: Path = sweep["repo"]
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("annlab")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("annlab.role") == "grid"]
    assert len(parents) == 2 and len(runs) == 4, "each experiment: one grid run and its one cell"
    rates = []
    for parent in parents:
        assert parent.info.status == "FINISHED"
        assert parent.data.tags.get("annlab.dvc_exp"), "the grid run names its DVC experiment"
        (child,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert child.info.run_name == "ann-adam-relu"
        assert child.info.status == "FINISHED"
        assert "test_accuracy" in child.data.metrics
        report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
        assert "report/comparison.md" in report
        rates.append(child.data.params["optimizers.adam.learning_rate"])
    assert sorted(rates) == sorted(RATES)
    # Artifacts live next to the database, not in the experiments' temporary copies.
    assert exp.artifact_location == (repo / "mlartifacts").as_uri()


def test_dvc_exp_show_lists_both_with_their_metrics(sweep: dict) -> None:
    repo: Path = sweep["repo"]
    shown = json.loads(dvc(repo, "exp", "show", "--json", store=None).stdout)
    found = {}
    for baseline in shown:
        for group in baseline.get("experiments") or []:
            for rev in group["revs"]:
                data = rev["data"]
                rate = data["params"]["params.yaml"]["data"]["optimizers"]["adam"]["learning_rate"]
                found[str(rate)] = data["metrics"]["reports/summary.json"]["data"]
    assert sorted(found) == sorted(RATES)
    for summary in found.values():
        assert summary["best_cell"] == "ann-adam-relu"
        assert 0 <= summary["best_test_accuracy"] <= 1
