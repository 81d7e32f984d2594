"""`make bench` on tiny sizes: every part runs and the report holds every figure."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

# TensorFlow's x86-64 Linux builds rewrite matmuls to oneDNN's (TF_ENABLE_ONEDNN_OPTS=1 makes sure)
ONEDNN = sys.platform == "linux" and platform.machine() == "x86_64"

pytestmark = pytest.mark.slow


def test_the_benchmark_runs_and_reports_every_part(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks/bench.py"), "--smoke", "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    text = out.read_text()
    result = json.loads(out.with_suffix(".json").read_text())
    training = result["training"]
    for side in ("tutorial", "tutorial_annlab_threads", "annlab", "annlab_keras_fit", "annlab_xla"):
        assert training[side]["epoch"]["median"] > 0
        assert 0 <= training[side]["accuracy"]["median"] <= 1
    # the same math: the tutorial's code, at annlab's thread count, ends where annlab does
    assert training["annlab"]["accuracy"] == training["tutorial_annlab_threads"]["accuracy"]
    pipeline = result["pipeline"]
    assert pipeline["cells"] == 2
    assert pipeline["stages"] == 6 + pipeline["cells"]  # validate ... report around the cells
    assert pipeline["noop_floor"]["median"] > 0
    assert pipeline["pipeline"]["median"] > 0 and pipeline["tutorial"]["median"] > 0
    stages = {"validate", "fetch", "preprocess", "train", "evaluate", "plot", "report"}
    assert set(pipeline["peak_rss_mib"]) == stages
    assert all(0 < mib < 8192 for mib in pipeline["peak_rss_mib"].values())
    assert result["mlflow"]["per_run"][0] > result["mlflow"]["nothing"][0]
    for heading in (
        "## Machine",
        "## Targets",
        "## Training throughput",
        "## Whole pipeline",
        "## MLflow overhead",
    ):
        assert heading in text
    assert f"{pipeline['noop']['median']:.2f} s" in text


def test_the_train_step_probes_run_and_keep_their_claims_on_bits() -> None:
    """The README's table of what else was tried: each variant runs, the ones it calls
    bit-identical to Keras are (the fused kernel's float32 `1 - beta` is not, nor are the
    single-threaded executor's matmuls, which miss oneDNN where oneDNN is in use, unless its
    step is a function of its own), and those reach Keras' test accuracy exactly."""
    tiny = ["--samples", "320", "--epochs", "2", "--rounds", "2"]  # Keras' 2nd run is checked against its 1st
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/train_step_probes.py"), *tiny],
        env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1"},
        check=True,
        capture_output=True,
        text=True,
    )
    rows = {}
    for line in proc.stdout.splitlines():
        if m := re.fullmatch(
            r"(\S+): ([\d.]+) \(.*\); same bits as keras: (\S+); test accuracy: (\S+)", line
        ):
            rows[m[1]] = (float(m[2]), m[3], m[4])
    expected = {
        "keras": "yes",
        "annlab-loop": "yes",
        "fused-adam": "no",
        "hoisted-adam": "yes",
        "hoisted-adam-no-step-metrics": "yes",
        "unrolled-8": "yes",
        "epoch-loop": "yes",
        "epoch-loop-single-threaded": "no",
        "epoch-loop-single-threaded-nested-step": "yes",
        "own-loop": "n/a",
        "plain-tf": "n/a",
        "plain-tf-single-threaded": "n/a",
    }
    found = {name: row[1] for name, row in rows.items()}
    if not ONEDNN:  # the claim is about oneDNN's matmuls: elsewhere it may or may not hold
        del found["epoch-loop-single-threaded"], expected["epoch-loop-single-threaded"]
    assert found == expected
    assert all(seconds > 0 for seconds, _, _ in rows.values())
    identical = {name for name, bits in expected.items() if bits == "yes"}
    assert {rows[name][2] for name in identical} == {rows["keras"][2]}
    assert re.fullmatch(r"(0\.\d{4}|1\.0000)-(0\.\d{4}|1\.0000)", rows["keras"][2])
    assert rows["own-loop"][2] == rows["plain-tf"][2] == "n/a"
