"""`make bench` on tiny sizes: every part runs and the report holds every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

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
    for side in ("tutorial", "annlab", "annlab_xla"):
        assert result["training"][side]["epoch"]["median"] > 0
        assert 0 <= result["training"][side]["accuracy"]["median"] <= 1
    pipeline = result["pipeline"]
    assert pipeline["cells"] == 2
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
    """The README's table of what else was tried: each variant runs, and the ones it calls
    bit-identical to Keras are (the fused kernel's float32 `1 - beta` is not)."""
    tiny = ["--samples", "320", "--epochs", "2", "--rounds", "2"]  # Keras' 2nd run is checked against its 1st
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/train_step_probes.py"), *tiny],
        check=True,
        capture_output=True,
        text=True,
    )
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    expected = {
        "keras": "yes",
        "fused-adam": "no",
        "hoisted-adam": "yes",
        "hoisted-adam-no-step-metrics": "yes",
        "own-loop": "n/a",
        "plain-tf": "n/a",
    }
    assert {name: lines[name].rsplit("same bits as keras: ", 1)[1] for name in expected} == expected
    assert all(float(lines[name].split(" ", 1)[0]) > 0 for name in expected)
