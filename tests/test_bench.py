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
