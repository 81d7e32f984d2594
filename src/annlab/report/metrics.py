"""Test-set metrics from labels and predicted probabilities (NumPy; checked against scikit-learn)."""

from __future__ import annotations

from typing import Any

import numpy as np

# The scalar test metrics `evaluate` returns (besides the sample count `n_test`).
TEST_METRICS = ["test_accuracy", "test_loss", "macro_precision", "macro_recall", "macro_f1", "weighted_f1"]

# Keras clips probabilities the same way, so our loss equals `model.evaluate`'s.
EPSILON = 1e-7


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Integer labels as one-hot float32 rows."""
    return np.eye(n_classes, dtype=np.float32)[labels]


def loss(y_true: np.ndarray, probs: np.ndarray, kind: str) -> float:
    """Mean categorical cross-entropy or mean squared error of probabilities against labels."""
    target = one_hot(y_true, probs.shape[1]).astype(np.float64)
    p = probs.astype(np.float64)
    if kind == "categorical_crossentropy":
        p = np.clip(p / p.sum(axis=1, keepdims=True), EPSILON, 1 - EPSILON)
        return float(-np.mean(np.sum(target * np.log(p), axis=1)))
    if kind == "mse":
        return float(np.mean((target - p) ** 2))
    raise ValueError(f"unknown loss {kind!r}")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns."""
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes**2).reshape(n_classes, n_classes)


def _safe_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # scikit-learn's convention (zero_division=0): an undefined ratio counts as 0.
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def evaluate(
    y_true: np.ndarray, probs: np.ndarray, loss_kind: str, class_names: list[str]
) -> tuple[dict[str, float], dict[str, Any]]:
    """Scalar metrics (for `dvc metrics`) and the per-class report with the confusion matrix."""
    n_classes = probs.shape[1]
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    precision = _safe_divide(tp, cm.sum(axis=0).astype(np.float64))
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    weights = support / support.sum()
    scalars = {
        "test_accuracy": float(tp.sum() / support.sum()),
        "test_loss": loss(y_true, probs, loss_kind),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "weighted_f1": float((f1 * weights).sum()),
        "n_test": int(support.sum()),
    }
    report = {
        "classes": [
            {
                "class": name,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        ],
        "confusion_matrix": cm.tolist(),
    }
    return scalars, report


# The per-seed numbers a cell reports, in table order; test metrics are None for a diverged seed.
SEED_METRICS = [*TEST_METRICS, "best_val_accuracy", "best_epoch", "epochs_run"]
# Which of them also get a standard deviation across seeds in a cell's metrics file.
SPREAD_METRICS = ["test_accuracy", "test_loss", "macro_f1", "best_val_accuracy"]


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1) of the values that are not None.

    None when nothing is left; the deviation is None for a single value, not 0: one seed
    says nothing about the spread.
    """
    kept = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if kept.size == 0:
        return None, None
    return float(kept.mean()), float(kept.std(ddof=1)) if kept.size > 1 else None


def cell_summary(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """A cell's metrics over its seeds, with `seeds` and `diverged` counts.

    Each metric is the mean over the seeds that did not diverge (None if all did): one
    seed's value as it is. With several seeds, `<metric>_std` gives the spread.
    """
    converged = [s for s in seeds if not s["diverged"]]
    summary: dict[str, Any] = {"seeds": len(seeds), "diverged": len(seeds) - len(converged)}
    summary["n_test"] = seeds[0]["n_test"]
    for key in SEED_METRICS:
        values = [s[key] for s in converged]
        mean, std = mean_std(values)
        summary[key] = values[0] if len(values) == 1 else mean  # one seed keeps its int epochs
        if key in SPREAD_METRICS and len(seeds) > 1:
            summary[f"{key}_std"] = std
    return summary
