"""The model registry: each grid's best model as a version, and the alias @champion for the one in use."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from annlab import io
from annlab.params import Params, default_model_name
from annlab.report import confidence as conf
from annlab.serve import served
from annlab.track import tracking

CHAMPION = "champion"
RAW_DIGEST_TAG = "annlab.raw_data_digest"  # the data the model learned from, whatever the split


def register_best(
    params: Params,
    rows: pd.DataFrame,
    headline: dict[str, Any],
    metas: Mapping[tuple[str, int], dict[str, Any]],
    data_dir: Path,
    run_of: Mapping[tuple[str, int], str],
) -> str:
    """Register the grid's best model (once per grid) and move the alias `champion` as the
    policy says (`champion_policy`); a line saying what happened.

    Args:
        metas: train's meta per (cell, seed).
        data_dir: preprocess's output, whose dataset.json names the raw data.
        run_of: the MLflow run of each (cell, seed) of the grid.
    """
    client = MlflowClient()
    name = params.registered_model
    champion = headline["champion"]  # chosen on validation: the test split chooses nothing
    cell = champion["cell"]
    best = rows[rows["cell"] == cell]
    runs = zip(best["seed"], best["val_accuracy"], best["diverged"], strict=True)
    seed = served.in_use_seed({int(s): (val, bool(diverged)) for s, val, diverged in runs})
    if seed is None:  # unreachable: the champion cell has a validation accuracy, so a seed that trained
        return f"report: registry: {cell}: every seed diverged; nothing registered"
    meta = metas[cell, seed]
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
        record = best[best["seed"] == seed].iloc[0]
        tags = {
            tracking.KEY_TAG: key,
            tracking.GRID_TAG: params.grid_id(),
            tracking.CELL_TAG: cell,
            "annlab.seed": str(seed),
            "annlab.git_commit": run.data.tags.get("mlflow.source.git.commit", "unknown"),
            "annlab.dvc_stage": f"train@{cell}",
            "annlab.data_digest": meta["data_digest"],
            RAW_DIGEST_TAG: io.read_json(data_dir / "dataset.json").get("raw_digest", ""),
            tracking.DATASET_TAG: meta["dataset"],
            "annlab.n_test": str(int(record["n_test"])),
            "annlab.test_accuracy": f"{float(record['test_accuracy']):.6f}",
            "annlab.cell_test_accuracy": _tag_number(champion.get("test_accuracy")),
            "annlab.cell_test_accuracy_low": _tag_number(champion.get("test_accuracy_low")),
            "annlab.cell_test_accuracy_high": _tag_number(champion.get("test_accuracy_high")),
            "annlab.cell_val_accuracy": _tag_number(champion.get("val_accuracy")),
            "annlab.cell_val_accuracy_low": _tag_number(champion.get("val_accuracy_low")),
            "annlab.cell_val_accuracy_high": _tag_number(champion.get("val_accuracy_high")),
            "annlab.learning_rate": str(float(record["learning_rate"])),
        }
        about = f"{cell} seed {seed}: grid {params.grid_id()}'s best on validation, {meta['dataset']}"
        return client.create_model_version(
            name, f"models:/{logged[-1]}", run_id=source_run, tags=tags, model_id=logged[-1],
            description=about,
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


def champion_policy(client: Any, name: str, new: Any) -> tuple[bool, str]:
    """Whether `new` becomes the champion, and why.

    It does when there is none, when the champion learned from the same dataset as it was before
    it changed (the file is the one the grid is about), or when the new best cell's
    mean validation accuracy lies above the champion's 95 % interval over seeds (for a champion
    registered before choices moved to validation: test accuracy, with one seed the Wilson
    interval of its test accuracy). A best within that interval is no evidence of a
    better model, so the champion stays: models in use do not flip with seed noise.

    A model of another dataset is never evidence against the champion: it is another model,
    with other inputs and classes. By default each dataset has its own registered model
    (`Params.registered_model`); under one name set for several, the alias stays.
    """
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no champion yet
        return True, f"now version {new.version} (there was none)"
    if current.version == new.version:
        return False, f"stays version {current.version}"
    old_data = (current.tags.get(tracking.DATASET_TAG), current.tags.get(RAW_DIGEST_TAG))
    new_data = (new.tags.get(tracking.DATASET_TAG), new.tags.get(RAW_DIGEST_TAG))
    if old_data[0] is not None and old_data[0] != new_data[0]:
        own = default_model_name(str(new_data[0]))
        return False, (
            f"stays version {current.version}: it was trained on {old_data[0]}, this grid is on"
            f" {new_data[0]}, and a model of other data is another model, not a better one; to put"
            f" this grid's models in use, register them under a name of their own: set"
            f" mlflow.registered_model to one (null registers each dataset as annlab-<dataset>,"
            f" here {own})"
        )
    if old_data != new_data:
        return True, (
            f"now version {new.version}: version {current.version} was trained on {new_data[0]} as it"
            f" was before it changed, this grid is on {new_data[0]}"
        )
    # On validation, as the grid chose its best; versions registered before that carry only
    # test accuracies, and are compared on those.
    split = (
        "val"
        if new.tags.get("annlab.cell_val_accuracy") and current.tags.get("annlab.cell_val_accuracy")
        else "test"
    )
    what = "validation" if split == "val" else "test"
    mean = float(new.tags[f"annlab.cell_{split}_accuracy"])
    high_tag = current.tags.get(f"annlab.cell_{split}_accuracy_high")
    if high_tag:
        high = float(high_tag)
    elif split == "test" and current.tags.get("annlab.n_test"):  # one seed: its test set's sampling error
        n = int(current.tags["annlab.n_test"])
        high = conf.wilson(round(float(current.tags["annlab.test_accuracy"]) * n), n)[1]
    else:
        high = float(current.tags[f"annlab.cell_{split}_accuracy"])
    if mean > high:
        return (
            True,
            f"now version {new.version}: its {what} accuracy {mean:.4f} is above version"
            f" {current.version}'s interval",
        )
    return False, (
        f"stays version {current.version}: the new best's {what} accuracy {mean:.4f} is within its interval"
        f" (up to {high:.4f}), so nothing shows the new model is better"
    )


def _tag_number(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.6f}"
