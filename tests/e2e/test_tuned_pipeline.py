"""End to end: the fair comparison through `make repro` on small data, 2 learning rates per
optimizer and 2 seeds: the report's tuned answer and Tuning section, the chosen rates recomputed
from the trials' histories, MLflow's final and trial runs under one parent, and caching (a
changed list retrains only its optimizer's cells)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from annlab import tuning
from conftest import dvc, repro, small_repo

pytestmark = pytest.mark.slow

RATES = {"sgd": [0.01, 0.3], "adam": [0.001, 0.01]}
SEEDS = [1, 2]
CELLS = ["ann-sgd-relu", "ann-sgd-tanh", "ann-adam-relu", "ann-adam-tanh"]
SUMMARY = re.compile(r"^trained (\d+), restored (\d+) from cache, failed (\d+)", re.MULTILINE)


def _store(repo: Path) -> str:
    return f"sqlite:///{repo / 'mlflow.db'}"


def _edit(params: dict) -> None:
    params["data"]["subset"] = 300
    params["train"]["epochs"] = 3
    params["train"]["checkpoint"] = "best"
    params["grid"] = {
        "model": ["ann"],
        "optimizer": ["sgd", "adam"],
        "activation": ["relu", "tanh"],
        "seeds": SEEDS,
    }
    params["tuning"] = {
        "learning_rates": {**RATES, "rmsprop": None},
        "select_on": "val_accuracy",
        "seed": None,
    }


def _set(repo: Path, change: object) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    change(params)  # type: ignore[operator]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _trained(proc: object) -> int:
    found = SUMMARY.search(proc.stdout)  # type: ignore[attr-defined]
    assert found, proc
    return int(found[1])


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> dict:
    repo = tmp_path_factory.mktemp("tuned")
    small_repo(repo, _edit)
    first = repro(repo, 2, _store(repo))
    return {"repo": repo, "first": first}


def test_the_report_opens_with_the_tuned_answer_and_its_tuning_section(tuned: dict) -> None:
    repo = tuned["repo"]
    text = (repo / "reports/comparison.md").read_text()
    assert text.splitlines()[2].startswith("**Best: ")
    assert "## Tuning" in text and "learning rate was chosen on validation accuracy on seed 1" in text
    assert "Validation accuracy against learning rate" in text
    assert (repo / "reports/figures/learning_rates.png").stat().st_size > 0
    summary = json.loads((repo / "reports/summary.json").read_text())
    assert set(summary["chosen_learning_rates"]) == set(CELLS)
    assert isinstance(summary["edge_warnings"], list)


def test_every_chosen_rate_is_the_argmax_of_its_trials_histories(tuned: dict) -> None:
    repo = tuned["repo"]
    chosen = json.loads((repo / "reports/summary.json").read_text())["chosen_learning_rates"]
    for cell in CELLS:
        optimizer = cell.split("-")[1]
        judged = []
        for rate in RATES[optimizer]:
            h = pd.read_csv(repo / f"reports/tuning/{cell}/lr-{rate!r}.csv", float_precision="round_trip")
            lists = {c: list(h[c]) for c in ("loss", "accuracy", "val_loss", "val_accuracy")}
            judged.append(tuning.Trial(rate, tuning.checkpoint(lists, "best", "val_accuracy")))
        assert chosen[cell] == tuning.choose(judged, "val_accuracy").learning_rate, cell


def test_mlflow_holds_the_final_runs_and_the_trials_under_one_parent(tuned: dict) -> None:
    client = MlflowClient(_store(tuned["repo"]))
    exp = client.get_experiment_by_name("annlab")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    roles = [r.data.tags.get("annlab.role") for r in runs]
    t, s = 2, len(SEEDS)
    assert roles.count("final") == len(CELLS) * s
    assert roles.count("trial") == len(CELLS) * (t - 1)
    assert (
        len({r.data.tags["mlflow.parentRunId"] for r in runs if r.data.tags.get("annlab.role") != "grid"})
        == 1
    )


def test_a_changed_list_retrains_only_its_optimizers_cells(tuned: dict) -> None:
    repo = tuned["repo"]
    trials_before = {c: (repo / f"reports/tuning/{c}/choice.json").read_bytes() for c in CELLS}
    _set(repo, lambda p: p["tuning"]["learning_rates"].update({"adam": [0.001, 0.003]}))
    proc = repro(repo, 2, _store(repo))
    assert _trained(proc) == 2  # ann-adam-relu, ann-adam-tanh
    for cell in ("ann-sgd-relu", "ann-sgd-tanh"):
        assert (repo / f"reports/tuning/{cell}/choice.json").read_bytes() == trials_before[cell]
    status = json.loads(dvc(repo, "status", "--json", store=_store(repo)).stdout)
    assert status == {}


def test_adding_a_seed_trains_no_more_trials(tuned: dict) -> None:
    repo = tuned["repo"]
    store = _store(repo)

    def files(folder: str) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in (repo / folder).iterdir()}

    tuning_before = {c: files(f"reports/tuning/{c}") for c in CELLS}
    history_before = {c: files(f"reports/history/{c}") for c in CELLS}
    model_before = {c: files(f"models/{c}/seed-1") for c in CELLS}
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("annlab")
    trials_logged = len(client.search_runs([exp.experiment_id], "tags.`annlab.role` = 'trial'"))
    _set(repo, lambda p: p["grid"].update({"seeds": [*SEEDS, 3]}))
    proc = repro(repo, 2, store)
    assert _trained(proc) == len(CELLS)
    # No trial trained again: each would be a new MLflow run.
    assert len(client.search_runs([exp.experiment_id], "tags.`annlab.role` = 'trial'")) == trials_logged
    for cell in CELLS:
        assert files(f"reports/tuning/{cell}") == tuning_before[cell]
        # The seeds trained before keep their bits; only seed 3 is new.
        history = files(f"reports/history/{cell}")
        assert {k: history[k] for k in history_before[cell]} == history_before[cell]
        assert set(history) == {"seed-1.csv", "seed-2.csv", "seed-3.csv"}
        after = files(f"models/{cell}/seed-1")
        assert after.keys() == model_before[cell].keys()
        # model.keras zips its write time, so the weights are compared through the history above.
        for name in ("preprocessing.json", "model_summary.txt", "timing.json"):
            assert after[name] == model_before[cell][name]
        assert after["dataset.json"] == (repo / "data/processed/dataset.json").read_bytes()  # this grid's
        meta = json.loads(after["meta.json"])
        assert meta["data_digest"] != json.loads(model_before[cell]["meta.json"])["data_digest"]
    # The report stage checked each run's keys against this grid's data (track/filing.py), and
    # MLflow's new grid holds every final run, the reused ones logged once, and no trial.
    grid = client.search_runs(
        [exp.experiment_id], "tags.`annlab.role` = 'grid'", order_by=["start_time DESC"]
    )[0]
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{grid.info.run_id}'")
    roles = [r.data.tags.get("annlab.role") for r in children]
    assert roles.count("final") == len(CELLS) * 3 and "trial" not in roles
    status = json.loads(dvc(repo, "status", "--json", store=store).stdout)
    assert status == {}
