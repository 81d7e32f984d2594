"""A Keras callback that logs a run's per-epoch metrics to MLflow while it trains (imports Keras)."""

from __future__ import annotations

import math
import time

import keras
import mlflow
from mlflow.entities import Metric

from annlab import runtime
from annlab.track import tracking


class EpochLogger(keras.callbacks.Callback):
    """Log each epoch's metrics (step = epoch, from 1) so the UI shows progress, at most once a
    second: a write to the store costs about as much as a digits epoch. Stop at the first epoch
    whose loss is no longer finite (the run has diverged)."""

    def __init__(self, link: tracking.Link) -> None:
        super().__init__()
        self.link = link

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self.pending: list[Metric] = []
        self.flushed = time.monotonic()
        self.steps_done = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self.steps_done = batch + 1  # Keras passes the last batch of the step

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if runtime.stop_requested() and self.steps_done < (self.params.get("steps") or 0):
            return  # a signal cut this epoch short: its metrics are not an epoch's (run KILLED)
        logs = {k: float(v) for k, v in (logs or {}).items()}
        now_ms = int(time.time() * 1000)
        self.pending += [Metric(k, v, now_ms, epoch + 1) for k, v in logs.items()]
        if time.monotonic() - self.flushed >= 1.0:
            self.flush()
        if not all(math.isfinite(v) for v in logs.values()):
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        self.flush()

    def flush(self) -> None:
        """Send the metrics gathered since the last flush (nothing when MLflow is out of reach)."""
        if self.pending:
            pending = self.pending
            self.link.call(lambda: tracking.log_metric_points(mlflow.active_run().info.run_id, pending))
        self.pending, self.flushed = [], time.monotonic()
