"""`annlab predict` names what it cannot find: a cell, a seed or a folder, and what there is."""

from __future__ import annotations

from pathlib import Path

import pytest

from annlab.__main__ import load_predictor
from annlab.errors import UserError


@pytest.fixture
def models(tmp_path: Path) -> Path:
    for seed in (1, 2, 5):
        (tmp_path / "models" / "ann-adam-relu" / f"seed-{seed}").mkdir(parents=True)
    return tmp_path / "models"


def test_a_missing_seed_folder_names_the_seeds_there(models: Path) -> None:
    with pytest.raises(UserError, match=r"seed-42: no such folder; .*ann-adam-relu has seeds 1, 2, 5$"):
        load_predictor(str(models / "ann-adam-relu" / "seed-42"), None, Path("elsewhere"))


def test_a_missing_folder_elsewhere_says_only_that(models: Path) -> None:
    with pytest.raises(UserError, match=r"nowhere/seed-1: no such folder$"):
        load_predictor(str(models.parent / "nowhere" / "seed-1"), None, models)


def test_an_unknown_cell_lists_the_trained_cells(models: Path) -> None:
    with pytest.raises(UserError, match=r"--model ann-sgd-relu: no such cell or folder; .*: ann-adam-relu$"):
        load_predictor("ann-sgd-relu", None, models)


def test_an_unknown_seed_of_a_cell_lists_its_seeds(models: Path) -> None:
    with pytest.raises(UserError, match=r"--seed 3: the cell has seeds 1, 2, 5$"):
        load_predictor("ann-adam-relu", 3, models)
