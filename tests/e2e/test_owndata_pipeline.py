"""End-to-end: the whole pipeline on a user's CSV (string class names, a categorical column,
missing values) and on a folder of RGB PNGs with the CNN; bad data stops it with nothing changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_owndata import digits_folder, real_table

from conftest import dvc, repro, small_repo

pytestmark = pytest.mark.slow

# Class names a user might write, with a comma (CSV quoting) and a bar (Markdown tables).
WINES = {"class_0": "Barolo, Piedmont", "class_1": "Grignolino", "class_2": "Barbera | Alba"}


def _snapshot(repo: Path) -> dict[str, bytes]:
    """Every pipeline output (the user's own data and the validate stage's outputs aside)."""
    return {
        str(p.relative_to(repo)): p.read_bytes()
        for top in ("data", "models", "reports")
        for p in sorted((repo / top).rglob("*"))
        if p.is_file()
        and p.name not in ("params.ok", "tuning.yaml")
        and "own" not in p.relative_to(repo).parts
    }


@pytest.fixture(scope="module")
def csv_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    repo = tmp_path_factory.mktemp("csv-repo")
    store = f"sqlite:///{repo.parent / 'csv-mlflow.db'}"
    frame = real_table("wine").rename(columns={"species": "cultivar"})
    frame["cultivar"] = frame["cultivar"].map(WINES)
    (repo / "data/own").mkdir(parents=True)
    frame.to_csv(repo / "data/own/wine.csv", index=False)

    def edit(params: dict) -> None:
        # The three lines a user writes, then a small grid.
        params["data"].update(dataset="csv", path="data/own/wine.csv", target="cultivar")
        params["train"]["epochs"] = 5
        params["grid"].update(optimizer=["sgd", "adam"], activation=["relu"], seeds=[1, 2])

    small_repo(repo, edit)
    repro(repo, 2, store)
    return repo, store


def test_a_csv_runs_through_every_stage_with_its_class_names(csv_repo: tuple[Path, str]) -> None:
    repo, store = csv_repo
    names = sorted(WINES.values())
    report = (repo / "reports/comparison.md").read_text()
    assert report.startswith("# Which optimizer and activation train this network best? (wine.csv)")
    assert "`data/own/wine.csv` (csv, target `cultivar`)" in report
    per_class = report.split("## Per class: ")[1].split("\n## ")[0]
    for name in ("Barolo, Piedmont", "Grignolino", "Barbera \\| Alba"):
        assert f"| {name} " in per_class
    predictions = pd.read_csv(repo / "reports/predictions/ann-adam-relu.csv")
    assert set(predictions["actual"]) == set(names) and len(predictions) == 2 * 36
    # Per seed, with each class's probability: the predicted class is the most probable one.
    assert predictions["seed"].value_counts().to_dict() == {1: 36, 2: 36}
    probabilities = predictions[[f"p({name})" for name in names]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    assert list(np.asarray(names, dtype=object)[probabilities.argmax(axis=1)]) == list(
        predictions["predicted"]
    )
    evaluation = json.loads((repo / "reports/eval/ann-adam-relu.json").read_text())
    assert evaluation["class_names"] == names
    assert [c["class"] for c in evaluation["seeds"][0]["classes"]] == names
    assert (repo / "reports/figures/cells/ann-adam-relu/confusion_matrix.png").stat().st_size > 0
    summary = json.loads((repo / "reports/summary.json").read_text())
    assert summary["best_test_accuracy"] > 0.5  # three balanced-ish classes: chance is about 0.4
    assert json.loads(dvc(repo, "status", "--json", store=store).stdout) == {}


def test_bad_data_stops_in_validate_and_changes_no_output(csv_repo: tuple[Path, str]) -> None:
    repo, store = csv_repo
    path = repo / "data/own/wine.csv"
    good = path.read_bytes()
    before = _snapshot(repo)
    frame = pd.read_csv(path, dtype=str)
    frame.loc[20, "alcohol"] = "twelve"
    frame.to_csv(path, index=False)
    try:
        proc = repro(repo, 2, store, check=False)
    finally:
        path.write_bytes(good)
    assert proc.returncode != 0
    assert "data/own/wine.csv: column 'alcohol' holds numbers, but line 22 has 'twelve'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _snapshot(repo) == before
    # The good file back: only the validation stamp comes back (DVC may restore it from its run
    # cache), and every other stage is up to date.
    again = repro(repo, 2, store).stdout
    assert "Running stage 'fetch'" not in again and "Running stage 'preprocess'" not in again
    assert "trained 0, restored 0 from cache, failed 0" in again
    assert json.loads(dvc(repo, "status", "--json", store=store).stdout) == {}
    assert _snapshot(repo) == before


def test_the_users_file_is_a_dependency_of_fetch(csv_repo: tuple[Path, str]) -> None:
    repo, store = csv_repo
    path = repo / "data/own/wine.csv"
    good = path.read_bytes()
    path.write_bytes(good + good.splitlines(keepends=True)[-1])  # one more row
    try:
        status = json.loads(dvc(repo, "status", "--json", store=store).stdout)
    finally:
        path.write_bytes(good)
    assert {"changed deps": {"data/own/wine.csv": "modified"}} in status["fetch"]


def test_a_folder_of_rgb_pngs_trains_the_cnn(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    digits_folder(repo / "data/own/digits", rgb=True, per_class=20)

    def edit(params: dict) -> None:
        params["data"].update(dataset="images", path="data/own/digits", color="rgb")
        params["train"]["epochs"] = 3
        params["model"]["cnn"]["filters"] = [4]
        params["grid"].update(model=["cnn"], optimizer=["adam"], activation=["relu"], seeds=None)

    small_repo(repo, edit)
    repro(repo, 1, f"sqlite:///{tmp_path / 'mlflow.db'}")
    info = json.loads((repo / "data/processed/dataset.json").read_text())
    assert info["input_shape"] == [8, 8, 3] and info["kind"] == "images"
    meta = json.loads((repo / "models/cnn-adam-relu/seed-42/meta.json").read_text())
    # conv 3x3 over 3 channels into 4 filters, pooled to 4x4x4, then 64-32 dense and 10 outputs
    assert meta["n_params"] == (27 + 1) * 4 + (64 + 1) * 64 + (64 + 1) * 32 + (32 + 1) * 10
    evaluation = json.loads((repo / "reports/eval/cnn-adam-relu.json").read_text())
    assert evaluation["class_names"] == sorted(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    )
    # The trained CNN classifies image files and labelled class folders as they are.
    env = {**os.environ, "PYTHONPATH": "src", "TF_CPP_MIN_LOG_LEVEL": "3"}
    predict = [sys.executable, "-m", "annlab", "predict", "--model", "cnn-adam-relu", "--input"]
    folder = subprocess.run([*predict, "data/own/digits"], cwd=repo, capture_output=True, text=True, env=env)
    assert folder.returncode == 0, folder.stderr
    assert "200 inputs" in folder.stderr and "accuracy " in folder.stderr
    assert len(folder.stdout.splitlines()) == 1 + 200
    files = ["data/own/digits/three/000.png", "data/own/digits/seven/001.png"]
    two = subprocess.run([*predict, *files], cwd=repo, capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr
    # Class folders in sorted order (eight, five, four, nine, one, seven, six, three, ...), 20 each.
    rows = folder.stdout.splitlines()[1:]
    expected = [rows[7 * 20 + 0].split(",")[0], rows[5 * 20 + 1].split(",")[0]]
    assert [line.split(",")[0] for line in two.stdout.splitlines()[1:]] == expected
