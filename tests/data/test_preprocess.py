"""Data tests: splits are stratified, disjoint and seeded; the scaler sees the training split only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from annlab import io
from annlab.data import owndata
from annlab.data.datasets import load_digits
from annlab.data.features import apply_scaler, fit_scaler
from annlab.params import DataParams, ParamsError
from annlab.stages import preprocess
from annlab.stages.preprocess import split_indices


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_digits()
    return images.reshape(len(images), -1).astype(np.float64), labels


def test_digits_contract(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    assert x.shape == (1797, 64)
    assert set(np.unique(y)) == set(range(10))
    assert not np.isnan(x).any()
    assert x.min() >= 0 and x.max() <= 16


def test_splits_are_disjoint_complete_and_sized(digits: tuple[np.ndarray, np.ndarray]) -> None:
    _, y = digits
    s = split_indices(y, DataParams(test_size=0.2, val_size=0.1), seed=0)
    union = np.concatenate(list(s.values()))
    assert len(union) == len(np.unique(union)) == len(y)
    assert len(s["test"]) == pytest.approx(0.2 * len(y), abs=1)
    assert len(s["val"]) == pytest.approx(0.1 * len(y), abs=1)


def test_splits_are_stratified(digits: tuple[np.ndarray, np.ndarray]) -> None:
    _, y = digits
    s = split_indices(y, DataParams(), seed=0)
    overall = np.bincount(y) / len(y)
    for idx in s.values():
        assert np.abs(np.bincount(y[idx], minlength=10) / len(idx) - overall).max() < 0.02


def test_splits_depend_on_seed_only(digits: tuple[np.ndarray, np.ndarray]) -> None:
    _, y = digits
    a, b = split_indices(y, DataParams(), 1), split_indices(y, DataParams(), 1)
    c = split_indices(y, DataParams(), 2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])


def test_subset_is_stratified_and_sized(digits: tuple[np.ndarray, np.ndarray]) -> None:
    _, y = digits
    s = split_indices(y, DataParams(subset=300), seed=0)
    kept = np.concatenate(list(s.values()))
    assert len(kept) == 300
    expected = np.bincount(y) / len(y) * 300
    assert np.abs(np.bincount(y[kept], minlength=10) - expected).max() <= 1


def test_too_small_a_subset_is_a_params_error(digits: tuple[np.ndarray, np.ndarray]) -> None:
    _, y = digits
    with pytest.raises(ParamsError, match=r"data\.subset=40 .* at least 10"):
        split_indices(y, DataParams(subset=40), seed=0)


def test_preprocess_stage_writes_a_consistent_contract(tmp_path: Path) -> None:
    images, labels = load_digits()
    raw, out = tmp_path / "raw", tmp_path / "processed"
    owndata.save_raw(raw, owndata.OwnData("images", images, labels, [str(i) for i in range(10)]), "digits")
    (tmp_path / "params.yaml").write_text("seed: 3\ndata: {scaler: standard}\n")
    preprocess.main(["--params", str(tmp_path / "params.yaml"), "--raw", str(raw), "--out", str(out)])

    info = io.read_json(out / "dataset.json")
    scaler = io.read_json(out / "preprocessing.json")["scaler"]
    x = {k: io.load_array(out, f"x_{k}") for k in ("train", "val", "test")}
    y = {k: io.load_array(out, f"y_{k}") for k in ("train", "val", "test")}
    assert info["input_shape"] == [8, 8] and info["kind"] == "images"
    assert info["sizes"] == {k: len(v) for k, v in y.items()}
    assert sum(info["sizes"].values()) == len(labels)
    assert all(v.dtype == np.float32 and not np.isnan(v).any() for v in x.values())
    # The saved scaler is the one that produced x_train, and its mean is x_train's raw mean.
    features = images.reshape(len(images), -1).astype(np.float64)
    s = split_indices(labels, DataParams(), seed=3)
    np.testing.assert_array_equal(y["train"], labels[s["train"]])
    np.testing.assert_allclose(scaler["shift"], features[s["train"]].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(x["train"], apply_scaler(scaler, features[s["train"]]))
    np.testing.assert_allclose(x["train"].mean(axis=0), 0, atol=1e-5)
    # Rerunning gives byte-identical files, so DVC sees no change downstream.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    preprocess.main(["--params", str(tmp_path / "params.yaml"), "--raw", str(raw), "--out", str(out)])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_standard_scaler_uses_training_statistics_only(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    s = split_indices(y, DataParams(), seed=0)
    train = x[s["train"]]
    state = fit_scaler("standard", train)
    expected_std = train.std(axis=0)
    np.testing.assert_allclose(state["shift"], train.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(state["scale"], np.where(expected_std == 0, 1, expected_std), rtol=1e-12)
    # Fitting on all data would give other statistics: the test would catch leakage.
    assert not np.allclose(state["shift"], x.mean(axis=0))
    scaled = apply_scaler(state, train)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled.mean(axis=0), 0, atol=1e-5)
    varying = expected_std > 0
    np.testing.assert_allclose(scaled[:, varying].std(axis=0), 1, atol=1e-5)
    # Held-out splits are scaled with the training statistics, not their own.
    test = x[s["test"]]
    np.testing.assert_allclose(
        apply_scaler(state, test), (test - state["shift"]) / state["scale"], rtol=1e-5, atol=1e-6
    )


def test_minmax_scaler_maps_training_range_to_unit(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = digits
    train = x[:1000]
    state = fit_scaler("minmax", train)
    span = train.max(axis=0) - train.min(axis=0)
    np.testing.assert_allclose(state["shift"], train.min(axis=0))
    np.testing.assert_allclose(state["scale"], np.where(span == 0, 1, span))
    scaled = apply_scaler(state, train)
    assert scaled.min() >= 0 and scaled.max() <= 1 + 1e-6


def test_no_scaler_is_identity(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = digits
    np.testing.assert_array_equal(apply_scaler(fit_scaler("none", x), x), x.astype(np.float32))


def test_each_training_seed_draws_its_own_split_and_scaler_with_no_leakage(tmp_path: Path) -> None:
    images, labels = load_digits()
    raw, out = tmp_path / "raw", tmp_path / "processed"
    owndata.save_raw(raw, owndata.OwnData("images", images, labels, [str(i) for i in range(10)]), "digits")
    params = tmp_path / "params.yaml"
    params.write_text("seed: 42\ndata: {split_per_seed: true}\ngrid: {seeds: [1, 2, 3]}\n")
    preprocess.main(["--params", str(params), "--raw", str(raw), "--out", str(out)])
    features = images.reshape(len(images), -1).astype(np.float64)
    tests = {}
    for seed in (1, 2, 3):
        split = io.split_dir(out, seed)
        assert split == out / f"seed-{seed}"  # every cell of this seed reads this one folder
        s = split_indices(labels, DataParams(), seed=seed)
        assert set(s["train"]).isdisjoint(s["val"]) and set(s["train"]).isdisjoint(s["test"])
        assert set(s["val"]).isdisjoint(s["test"])
        np.testing.assert_array_equal(io.load_array(split, "y_test"), labels[s["test"]])
        scaler = io.read_json(split / "preprocessing.json")["scaler"]
        # fitted on this seed's training split only
        np.testing.assert_allclose(scaler["shift"], features[s["train"]].mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(io.load_array(split, "x_test"), apply_scaler(scaler, features[s["test"]]))
        tests[seed] = tuple(s["test"])
    assert len(set(tests.values())) == 3  # another split for each seed
    assert io.read_json(out / "dataset.json")["split_seeds"] == [1, 2, 3]
    # false: the one split of the top-level seed, at the top, for every training seed
    params.write_text("seed: 42\ndata: {split_per_seed: false}\ngrid: {seeds: [1, 2, 3]}\n")
    preprocess.main(["--params", str(params), "--raw", str(raw), "--out", str(out)])
    assert io.split_dir(out, 2) == out and not (out / "seed-2").exists()
    s = split_indices(labels, DataParams(), seed=42)
    np.testing.assert_array_equal(io.load_array(out, "y_test"), labels[s["test"]])
