"""`annlab predict` names what it cannot find: a cell, a seed or a folder, and what there is."""

from __future__ import annotations

import json
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


def test_a_missing_cell_folder_lists_the_cells_beside_it(models: Path) -> None:
    with pytest.raises(UserError, match=r"ann-sgd-relu: no such folder; .*models holds ann-adam-relu$"):
        load_predictor(str(models / "ann-sgd-relu"), None, Path("elsewhere"))


def test_a_file_names_its_folder(models: Path) -> None:
    model_file = models / "ann-adam-relu" / "seed-1" / "model.keras"
    model_file.write_bytes(b"")
    with pytest.raises(UserError, match=r"model.keras: a file; give the folder that holds it, .*seed-1$"):
        load_predictor(str(model_file), None, models)


def test_a_cell_without_seed_folders_says_so(models: Path) -> None:
    (models / "ann-sgd-tanh").mkdir()  # left empty by a training that never finished
    with pytest.raises(UserError, match=r"ann-sgd-tanh holds no trained seeds"):
        load_predictor("ann-sgd-tanh", None, models)


def test_a_seed_folder_under_models_is_found_there(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import annlab.serve.served

    monkeypatch.setattr(annlab.serve.served.Predictor, "load", staticmethod(lambda folder: folder))
    predictor, where = load_predictor("ann-adam-relu/seed-2", None, models)
    assert predictor == models / "ann-adam-relu" / "seed-2" and where == str(predictor)


def _metas(models: Path, runs: dict[int, tuple[float, bool]]) -> None:
    for seed, (val_accuracy, diverged) in runs.items():
        meta = {"best_val_accuracy": val_accuracy, "diverged": diverged}
        (models / "ann-adam-relu" / f"seed-{seed}" / "meta.json").write_text(json.dumps(meta))


def test_a_cell_is_its_best_validated_seed_that_did_not_diverge(
    models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The highest validation accuracy wins, the lowest seed on a tie; a diverged seed never."""
    import annlab.serve.served

    monkeypatch.setattr(annlab.serve.served.Predictor, "load", staticmethod(lambda folder: folder))
    _metas(models, {1: (0.9, False), 2: (0.95, True), 5: (0.9, False)})
    assert load_predictor("ann-adam-relu", None, models)[0] == models / "ann-adam-relu" / "seed-1"
    _metas(models, {1: (0.9, True), 2: (0.95, True), 5: (0.9, True)})
    with pytest.raises(UserError, match=r"ann-adam-relu: every seed diverged; no model to use$"):
        load_predictor("ann-adam-relu", None, models)


def test_predict_skips_what_an_os_leaves_in_a_folder_of_images(tmp_path: Path) -> None:
    """A Mac zip's __MACOSX/ is no class, and its ._ files are no images, as in training."""
    from annlab.serve import served

    photos = tmp_path / "photos"
    (photos / "__MACOSX").mkdir(parents=True)
    for name in ("a.png", "b.jpg", "._a.png", "__MACOSX/._a.png", "Thumbs.db"):
        (photos / name).write_bytes(b"")
    assert served._image_files(photos) == ([photos / "a.png", photos / "b.jpg"], None)
    (photos / "cat").mkdir()
    with pytest.raises(UserError, match=r"photos: no PNG or JPEG images in its class folders \(cat\)$"):
        served._image_files(photos)
