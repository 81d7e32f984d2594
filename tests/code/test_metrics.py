"""Code tests: our metrics against scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from annlab.report.metrics import evaluate, loss, one_hot


@pytest.fixture(params=[0, 1, 2])
def predictions(request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(request.param)
    n, k = 200, 5
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.5 * one_hot(y, k)
    if request.param == 2:
        logits[:, 3] -= 100  # class 3 is never predicted: precision is 0/0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs.astype(np.float32)


def test_scalars_match_sklearn(predictions: tuple[np.ndarray, np.ndarray]) -> None:
    y, probs = predictions
    pred = probs.argmax(axis=1)
    scalars, report = evaluate(y, probs, "categorical_crossentropy", list("abcde"))
    p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    assert scalars["test_accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert scalars["macro_precision"] == pytest.approx(p, abs=1e-12)
    assert scalars["macro_recall"] == pytest.approx(r, abs=1e-12)
    assert scalars["macro_f1"] == pytest.approx(f, abs=1e-12)
    assert scalars["weighted_f1"] == pytest.approx(
        skm.f1_score(y, pred, average="weighted", zero_division=0), abs=1e-12
    )
    if probs.min() > 1e-6:  # below that, Keras' clipping (ours) and sklearn's differ by design
        assert scalars["test_loss"] == pytest.approx(skm.log_loss(y, probs, labels=range(5)), rel=1e-5)
    assert report["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=range(5)).tolist()
    per_class = skm.precision_recall_fscore_support(y, pred, labels=range(5), zero_division=0)
    for i, row in enumerate(report["classes"]):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (per_class[0][i], per_class[1][i], per_class[2][i], per_class[3][i])
        )


def test_mse_loss_matches_sklearn(predictions: tuple[np.ndarray, np.ndarray]) -> None:
    y, probs = predictions
    expected = skm.mean_squared_error(one_hot(y, 5), probs)
    assert loss(y, probs, "mse") == pytest.approx(expected, rel=1e-6)


def test_perfect_predictions() -> None:
    y = np.array([0, 1, 2, 2])
    scalars, _ = evaluate(y, one_hot(y, 3), "categorical_crossentropy", ["a", "b", "c"])
    assert scalars["test_accuracy"] == scalars["macro_f1"] == 1.0
    assert scalars["test_loss"] == pytest.approx(-np.log(1 - 1e-7), abs=1e-6)
