"""The trained model in use: raw inputs through the model folder, the logged MLflow model, the
registry's champion, `annlab predict` and a served model, on digits and on a CSV with
categorical columns and missing values."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_owndata import real_table

from annlab.report import metrics
from annlab.serve import served
from conftest import REPO, free_port, repro, small_repo

pytestmark = pytest.mark.slow

CELLS = ["ann-adam-relu", "ann-adam-tanh"]
SEEDS = [1, 2]


def _grid(params: dict) -> None:
    params["train"]["epochs"] = 4
    params["grid"].update(optimizer=["adam"], activation=["relu", "tanh"], seeds=SEEDS)


@pytest.fixture(scope="module", params=["digits", "csv"])
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A repo after `make repro` of a two-cell, two-seed grid, with its own MLflow store."""
    kind = request.param
    repo = tmp_path_factory.mktemp(f"{kind}-repo")
    store = f"sqlite:///{repo.parent / (repo.name + '-mlflow.db')}"
    if kind == "csv":
        (repo / "data/own").mkdir(parents=True)
        real_table("wine").to_csv(repo / "data/own/wine.csv", index=False)

    def edit(params: dict) -> None:
        _grid(params)
        if kind == "csv":
            params["data"].update(dataset="csv", path="data/own/wine.csv", target="species")
        else:
            params["data"]["subset"] = 400

    small_repo(repo, edit)
    repro(repo, 2, store)
    # One registered model per dataset: annlab-digits, annlab-wine (wine.csv).
    name = "annlab-wine" if kind == "csv" else "annlab-digits"
    return {"kind": kind, "repo": repo, "store": store, "name": name, "champion": f"models:/{name}@champion"}


def _raw_test(repo: Path, seed: int, predictor: served.Predictor) -> tuple[Any, np.ndarray]:
    split = repo / "data/processed" / f"seed-{seed}"
    name = served.RAW_TEST_TABLE if predictor.is_table else served.RAW_TEST_ARRAYS
    x, labels = served.read_inputs(split / name, predictor)
    assert labels is not None
    return x, labels


def test_raw_test_rows_score_exactly_the_pipeline_test_metrics(trained: dict[str, Any]) -> None:
    repo = trained["repo"]
    for cell in CELLS:
        evaluation = json.loads((repo / f"reports/eval/{cell}.json").read_text())
        for entry in evaluation["seeds"]:
            predictor = served.Predictor.load(repo / f"models/{cell}/seed-{entry['seed']}")
            x, labels = _raw_test(repo, entry["seed"], predictor)
            scalars, _ = metrics.evaluate(
                labels, predictor.probabilities(x), "categorical_crossentropy", predictor.class_names
            )
            for key in ("test_accuracy", "test_loss", "macro_f1"):
                assert scalars[key] == entry[key], (cell, entry["seed"], key)


def _client(store: str) -> Any:
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(store)
    return MlflowClient(store)


def test_the_best_model_is_registered_once_with_its_provenance(trained: dict[str, Any]) -> None:
    repo, store = trained["repo"], trained["store"]
    client = _client(store)
    (version,) = client.search_model_versions(f"name='{trained['name']}'")
    summary = json.loads((repo / "reports/summary.json").read_text())
    tags = version.tags
    assert tags["annlab.cell"] == summary["best_cell"]
    assert tags["annlab.dvc_stage"] == f"train@{summary['best_cell']}"
    assert int(tags["annlab.seed"]) in SEEDS
    assert float(tags["annlab.cell_test_accuracy"]) == pytest.approx(summary["best_test_accuracy"], abs=1e-6)
    assert float(tags["annlab.cell_test_accuracy_low"]) <= float(tags["annlab.cell_test_accuracy"])
    assert tags["annlab.grid"] and tags["annlab.data_digest"] and tags["annlab.git_commit"]
    assert client.get_model_version_by_alias(trained["name"], "champion").version == version.version
    # The seed in use is the best validation accuracy, not the best test accuracy.
    metas = {
        s: json.loads((repo / f"models/{tags['annlab.cell']}/seed-{s}/meta.json").read_text()) for s in SEEDS
    }
    assert int(tags["annlab.seed"]) == min(SEEDS, key=lambda s: (-metas[s]["best_val_accuracy"], s))
    # The report again (as `annlab sync` runs it) adds no version.
    sync = _annlab(repo, store, "sync")
    assert sync.returncode == 0, sync.stderr
    assert f"already holds {trained['name']} version 1" in sync.stdout
    assert len(client.search_model_versions(f"name='{trained['name']}'")) == 1


def test_the_logged_model_takes_raw_inputs_with_its_signature(trained: dict[str, Any]) -> None:
    import mlflow

    repo, store = trained["repo"], trained["store"]
    client = _client(store)
    version = client.get_model_version_by_alias(trained["name"], "champion")
    seed = int(version.tags["annlab.seed"])
    local = served.Predictor.load(repo / f"models/{version.tags['annlab.cell']}/seed-{seed}")
    x, _ = _raw_test(repo, seed, local)
    model = mlflow.pyfunc.load_model(trained["champion"])
    pd.testing.assert_frame_equal(model.predict(x), local.predict(x))
    inputs = model.metadata.get_input_schema()
    if local.is_table:
        assert (
            inputs.input_names()
            == local.columns["numeric"] + local.columns["categorical"]
            == [c for c in real_table("wine").columns if c != "species"]
        )
        # Missing values and a category training never saw are raw inputs too.
        odd = x.head(3).copy()
        odd.loc[0, "alcohol"] = np.nan
        odd.loc[1, "site"] = None
        odd.loc[2, "site"] = "west"
        assert list(model.predict(odd)["predicted"]) == list(local.predict(odd)["predicted"])
    else:
        # Images in either layout: MLflow's tensor schema fixes the rank, so the model checks them.
        assert inputs is None
        assert "(n, 8, 8)" in model.metadata.metadata["annlab_inputs"]
        assert "(n, 64)" in model.metadata.metadata["annlab_inputs"]
        pd.testing.assert_frame_equal(model.predict(x.reshape(len(x), -1)), local.predict(x))
    assert model.metadata.saved_input_example_info is not None


def _annlab(repo: Path, store: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": "src", "MLFLOW_TRACKING_URI": store, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "annlab", *argv], cwd=repo, capture_output=True, text=True, env=env
    )


def test_predict_from_a_cell_needs_no_mlflow_and_matches_the_test_metrics(trained: dict[str, Any]) -> None:
    repo = trained["repo"]
    cell, seed = CELLS[0], SEEDS[1]
    name = "test.parquet" if trained["kind"] == "csv" else "test.npz"
    # A tracking server nobody runs: a cell's model comes from the DVC outputs alone.
    proc = _annlab(
        repo, "http://127.0.0.1:9", "predict", "--model", cell, "--seed", str(seed),
        "--input", f"data/processed/seed-{seed}/{name}", "--output", "out.csv",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    entry = next(
        e for e in json.loads((repo / f"reports/eval/{cell}.json").read_text())["seeds"] if e["seed"] == seed
    )
    assert (
        f"accuracy {entry['test_accuracy']:.4f} ({round(entry['test_accuracy'] * entry['n_test'])}/"
        in proc.stdout
    )
    out = pd.read_csv(repo / "out.csv", dtype={"predicted": str})
    names = served.Predictor.load(repo / f"models/{cell}/seed-{seed}").class_names
    assert list(out.columns) == ["predicted", *[f"p({n})" for n in names]]
    assert len(out) == entry["n_test"] and set(out["predicted"]) <= set(names)
    np.testing.assert_allclose(out.iloc[:, 1:].sum(axis=1), 1, atol=1e-5)


def test_predict_with_the_champion_matches_its_seeds_test_metrics(trained: dict[str, Any]) -> None:
    repo, store = trained["repo"], trained["store"]
    version = _client(store).get_model_version_by_alias(trained["name"], "champion")
    seed = int(version.tags["annlab.seed"])
    name = "test.parquet" if trained["kind"] == "csv" else "test.npz"
    # No --model: the champion of params.yaml's dataset.
    proc = _annlab(repo, store, "predict", "--input", f"data/processed/seed-{seed}/{name}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("predicted,")  # no --output: the CSV on stdout, the notes on stderr
    assert f"accuracy {float(version.tags['annlab.test_accuracy']):.4f}" in proc.stderr
    # The same model as its folder and as its run's model: the same predictions.
    folder = f"models/{version.tags['annlab.cell']}/seed-{seed}"
    run = f"runs:/{version.run_id}/model"
    for ref in (folder, run, trained["champion"]):
        same = _annlab(
            repo, store, "predict", "--model", ref, "--input", f"data/processed/seed-{seed}/{name}"
        )
        assert same.returncode == 0, same.stderr
        assert same.stdout == proc.stdout, ref


def test_predict_refuses_wrong_columns_or_a_wrong_shape_in_one_message(trained: dict[str, Any]) -> None:
    repo = trained["repo"]
    bad = repo / ("bad.csv" if trained["kind"] == "csv" else "bad.npy")
    if trained["kind"] == "csv":
        real_table("wine").drop(columns=["alcohol", "hue"]).to_csv(bad, index=False)
        expected = "missing columns 'alcohol', 'hue'; expected a table with the columns alcohol (number)"
    else:
        np.save(bad, np.zeros((3, 63)))
        expected = (
            "got an array of shape (3, 63); expected an array of shape (n, 8, 8) of pixel values,"
            " or flat rows (n, 64)"
        )
    proc = _annlab(repo, trained["store"], "predict", "--model", CELLS[0], "--input", bad.name)
    assert proc.returncode == 2
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and expected in error[0], proc.stderr
    assert "Traceback" not in proc.stderr


def _post(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_the_served_champion_answers_like_predict_and_refuses_bad_requests(trained: dict[str, Any]) -> None:
    repo, store = trained["repo"], trained["store"]
    version = _client(store).get_model_version_by_alias(trained["name"], "champion")
    seed = int(version.tags["annlab.seed"])
    local = served.Predictor.load(repo / f"models/{version.tags['annlab.cell']}/seed-{seed}")
    x, _ = _raw_test(repo, seed, local)
    port = free_port()
    # The command `make serve` runs (tests/test_docs.py checks the Makefile says so).
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        *SERVE_ARGS,
        trained["champion"],
        "--port",
        str(port),
    ]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    server = subprocess.Popen(
        command, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5):
                    break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:] if server.stderr else ""
                assert time.monotonic() < deadline, "the model server did not start"
                time.sleep(1)
        rows = x.head(5) if local.is_table else x[:5]
        if local.is_table:
            body = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
            bad = {
                "dataframe_split": json.loads(
                    rows.drop(columns=["alcohol"]).to_json(orient="split", index=False)
                )
            }
        else:
            body = {"inputs": rows.tolist()}
            bad = {"inputs": np.zeros((2, 7, 7)).tolist()}
        status, answer = _post(f"{url}/invocations", body)
        assert status == 200, answer
        expected = local.predict(rows)
        got = pd.DataFrame(answer["predictions"])
        assert list(got["predicted"]) == list(expected["predicted"])
        np.testing.assert_allclose(got.iloc[:, 1:].to_numpy(), expected.iloc[:, 1:].to_numpy(), rtol=1e-6)
        if not local.is_table:  # flat rows of 64 pixels, as load_digits().data holds them
            status, flat = _post(f"{url}/invocations", {"inputs": rows.reshape(len(rows), -1).tolist()})
            assert status == 200 and flat == answer, flat
        status, answer = _post(f"{url}/invocations", bad)
        assert 400 <= status < 500 and answer.get("message"), answer
        assert _post(f"{url}/invocations", body)[0] == 200  # still answering
        if not local.is_table:  # pixels scaled to 0-1: answered, and one warning in the log
            status, scaled = _post(f"{url}/invocations", {"inputs": (rows / 16.0).tolist()})
            assert status == 200 and len(scaled["predictions"]) == len(rows)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    log = server.stderr.read().decode() if server.stderr else ""
    # One warning per request whose inputs look unlike the training data: the good body (sent
    # twice) if its rows lie outside the model's training ranges, and the scaled pixels.
    expected = 2 * bool(local.input_warnings(rows)) + (0 if local.is_table else 1)
    assert log.count("inputs unlike the training data") == expected, log[-3000:]


SERVE_ARGS = ["models", "serve", "--host", "127.0.0.1", "--env-manager", "local", "-m"]


def test_make_serve_runs_this_command(trained: dict[str, Any]) -> None:
    recipe = (REPO / "Makefile").read_text().split("\nserve:")[1].split("\n\n")[0]
    # MODEL, or the dataset's champion; a failing `annlab champion` (a bad params.yaml) stops it.
    assert '@model="$(or $(MODEL),$$(annlab champion))" && ' in recipe
    assert 'mlflow models serve -m "$$model"' in recipe
    assert "--host 127.0.0.1 --port $(PORT) --env-manager local" in recipe
    assert "\nMODEL ?=\n" in (REPO / "Makefile").read_text()
    # What `annlab champion` gives make serve: the champion of the workspace's dataset.
    proc = _annlab(trained["repo"], trained["store"], "champion")
    assert proc.returncode == 0 and proc.stdout.strip() == trained["champion"], proc


def test_predict_takes_inputs_as_users_hold_them_and_warns_when_unlike_training(
    trained: dict[str, Any],
) -> None:
    repo, store = trained["repo"], trained["store"]

    def predict(name: str, model: str = "models:/annlab@champion") -> subprocess.CompletedProcess[str]:
        proc = _annlab(repo, store, "predict", "--model", model, "--input", name)
        assert proc.returncode == 0, proc.stderr
        return proc

    def warnings(proc: subprocess.CompletedProcess[str]) -> list[str]:
        return [line for line in proc.stderr.splitlines() if line.startswith("warning:")]

    if trained["kind"] == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        np.save(repo / "flat.npy", bunch.data)  # (1797, 64), as the tutorial holds digits
        np.save(repo / "images.npy", bunch.images)
        np.save(repo / "scaled.npy", bunch.images / 16.0)
        # The name the docs used before one registered model per dataset: its champion now.
        flat = predict("flat.npy")
        assert "annlab-digits@champion" in flat.stderr
        assert flat.stdout == predict("images.npy").stdout and len(flat.stdout.splitlines()) == 1798
        assert warnings(flat) == []
        (line,) = warnings(predict("scaled.npy"))
        assert "pixels look scaled to 0-1; the model was trained on 0-16" in line and "scaled.npy" in line
    else:
        rows = real_table("wine").drop(columns=["species"]).head(40)
        # In range: each number clipped to what the champion's training split held.
        version = _client(store).get_model_version_by_alias(trained["name"], "champion")
        folder = repo / f"models/{version.tags['annlab.cell']}/seed-{version.tags['annlab.seed']}"
        numeric = json.loads((folder / "preprocessing.json").read_text())["numeric"]
        for name, (low, high) in zip(numeric["columns"], numeric["range"], strict=True):
            rows[name] = rows[name].clip(low, high)
        rows.to_csv(repo / "same.csv", index=False)
        assert warnings(predict("same.csv")) == []
        far = rows.assign(alcohol=rows["alcohol"] * 100)
        far.to_csv(repo / "far.csv", index=False)
        (line,) = warnings(predict("far.csv"))
        assert "column 'alcohol': " in line and "outside the training range" in line
        odd = rows.assign(site=["atlantis", *rows["site"][1:]])
        odd.to_csv(repo / "odd.csv", index=False)
        proc = predict("odd.csv")
        (line,) = warnings(proc)
        assert "column 'site': 'atlantis' never seen in training" in line
        assert len(proc.stdout.splitlines()) == 41  # predicted all the same
