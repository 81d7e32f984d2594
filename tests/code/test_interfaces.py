"""Code: the interfaces users and logged models hold on to keep working after the code moved
into parts: each stage as `python -m annlab.stages.<name>`, and the entry that MLflow models
logged before the move run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

STAGES = sorted(
    {
        s["cmd"].split("python -m ")[1].split()[0]
        for s in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values()
    }
)


@pytest.mark.parametrize("module", STAGES)
def test_each_stage_runs_as_a_module(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "--params" in done.stdout


def test_a_model_logged_before_the_move_finds_its_pyfunc(tmp_path: Path) -> None:
    # The pyfunc_entry.py that MLflow stored with every model logged before the parts were folders.
    old_entry = tmp_path / "pyfunc_entry.py"
    old_entry.write_text(
        "import mlflow\n\nfrom annlab.pyfunc import AnnlabModel\n\nmlflow.models.set_model(AnnlabModel())\n"
    )
    code = (
        "import runpy, annlab.serve.pyfunc as p\n"
        f"entry = runpy.run_path({str(old_entry)!r})\n"
        "assert entry['AnnlabModel'] is p.AnnlabModel\n"
        "print('loaded')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "loaded" in done.stdout


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_annlab_help_is_not_an_error(flag: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "annlab", flag], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: annlab {")


def test_an_unknown_command_is_one() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "annlab", "fly"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and done.stderr.startswith("usage: annlab {")
