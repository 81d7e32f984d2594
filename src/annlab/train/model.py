"""Build the network (the tutorial's ANN, a CNN, an RNN or an LSTM) and its optimizer from
params, and train it (imports Keras: train, evaluate and the benchmark only)."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import keras
import numpy as np

from annlab import runtime
from annlab.errors import UserError
from annlab.params import ModelParams, OptimizersParams, Params
from annlab.train import loop
from annlab.train.speed import Speed

VALIDATION_BATCH = 1024
LOSSES = {"categorical_crossentropy": "categorical_crossentropy", "mse": "mean_squared_error"}


def configure(speed: Speed) -> None:
    """Thread pools and determinism, once per process, before TensorFlow runs its first op.

    On CPU, with a fixed number of intra-op threads, TensorFlow's kernels give the same bits on
    every run (tests/model/test_speed.py checks it; dense and recurrent layers at any thread count,
    convolutions only at the same count, which is why it is fixed), and `enable_op_determinism`
    only slows training (by a third, measured) and changes the bits it rounds. GPU kernels are
    not deterministic without it, so it is on where a GPU is.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(speed.intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(speed.inter_op_threads)
    except RuntimeError:
        pass  # TensorFlow already ran in this process (tests): its pools stay, results do not change
    if gpus := tf.config.list_physical_devices("GPU"):
        tf.config.experimental.enable_op_determinism()
        for gpu in gpus:  # cells sharing a GPU (ANNLAB_GPUS_PER_CELL=0.5) each take what they use
            with contextlib.suppress(RuntimeError):  # already initialized in this process
                tf.config.experimental.set_memory_growth(gpu, True)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow (initial weights, shuffling)."""
    keras.utils.set_random_seed(seed)


def build_model(model: ModelParams, input_shape: tuple[int, ...], n_classes: int) -> keras.Model:
    """The network `model.type` names, on the flat features of samples of `input_shape`:
    (height, width) or (height, width, channels) for images, (features,) for a table.

    - ann: dense hidden layers, as in the tutorial;
    - cnn: the features as an image, a Conv2D + MaxPooling2D block per `model.cnn.filters`
      entry (both with "same" padding), flattened;
    - rnn, lstm: the image's rows as time steps (width x channels features each), stacked
      SimpleRNN or LSTM layers whose last state is kept; the grid's activation is the cell
      activation (an LSTM's gates stay sigmoid).

    Then the dense `model.hidden_units` (each followed by dropout, if its rate is set) and a
    softmax output. Every layer uses `model.activation`.
    """
    if model.type != "ann" and len(input_shape) < 2:
        raise UserError(
            f"a {model.type} needs images (height, width[, channels]); these samples are {input_shape}"
        )
    height, width, channels = (*input_shape, 1)[:3] if len(input_shape) >= 2 else (0, 0, 0)
    act = model.activation
    layers: list[Any] = [keras.Input(shape=(int(np.prod(input_shape)),), name="features")]
    if model.type == "cnn":
        layers.append(keras.layers.Reshape((height, width, channels), name="image"))
        for i, filters in enumerate(model.cnn.filters, start=1):
            layers.append(
                keras.layers.Conv2D(
                    filters, model.cnn.kernel_size, padding="same", activation=act, name=f"conv_{i}"
                )
            )
            # "same": an odd side rounds up (7 -> 4) rather than dropping its last row, and a
            # deep stack stops at 1x1 instead of failing on an image pooled away to nothing.
            layers.append(keras.layers.MaxPooling2D(model.cnn.pool_size, padding="same", name=f"pool_{i}"))
        layers.append(keras.layers.Flatten(name="flatten"))
    elif model.type in ("rnn", "lstm"):
        layers.append(keras.layers.Reshape((height, width * channels), name="rows"))
        recurrent = keras.layers.SimpleRNN if model.type == "rnn" else keras.layers.LSTM
        units = getattr(model, model.type).units
        for i, n in enumerate(units, start=1):
            # Every layer but the last passes its whole sequence on to the next.
            layers.append(
                recurrent(n, activation=act, return_sequences=i < len(units), name=f"{model.type}_{i}")
            )
    for i, units in enumerate(model.hidden_units, start=1):
        layers.append(keras.layers.Dense(units, activation=act, name=f"hidden_{i}"))
        if model.dropout:
            layers.append(keras.layers.Dropout(model.dropout, name=f"dropout_{i}"))
    layers.append(keras.layers.Dense(n_classes, activation="softmax", name="output"))
    return keras.Sequential(layers, name=model.type)


def make_optimizer(name: str, optimizers: OptimizersParams) -> keras.optimizers.Optimizer:
    """The named Keras optimizer with its hyperparameters from `optimizers.<name>`."""
    classes = {
        "sgd": keras.optimizers.SGD,
        "adam": keras.optimizers.Adam,
        "rmsprop": keras.optimizers.RMSprop,
    }
    return classes[name](**getattr(optimizers, name).model_dump())


def compiled_model(
    params: Params,
    input_shape: tuple[int, ...],
    n_classes: int,
    speed: Speed | None = None,
    n_train: int = 0,
) -> keras.Model:
    """The model of one run (`params.model.type`), compiled with its optimizer, loss and
    accuracy metric.

    `speed` and `n_train` (the training set's size) set how many batches run per call into
    TensorFlow; they change how fast it trains, not what it computes.
    """
    speed = speed or Speed(steps_per_execution=1)
    model = build_model(params.model, input_shape, n_classes)
    model.compile(
        optimizer=make_optimizer(params.train.optimizer, params.optimizers),
        loss=LOSSES[params.train.loss],
        metrics=["accuracy"],
        steps_per_execution=speed.steps(n_train, params.train.batch_size),
        jit_compile=speed.jit_compile,
    )
    return model


class StopWhenAsked(keras.callbacks.Callback):
    """End training, as early stopping does, at the first step or epoch end after a signal
    asked to stop (one that came during validation or a callback's work is seen there)."""

    def _stop_if_asked(self, step_or_epoch: int, logs: dict[str, Any] | None = None) -> None:
        if runtime.stop_requested():
            self.model.stop_training = True

    on_train_batch_end = on_epoch_end = _stop_if_asked


class KeepBest(keras.callbacks.Callback):
    """Keep the weights of the epoch `tuning.checkpoint` would pick ("best": the first epoch with
    the best `select_on` among those with finite metrics) and put them back when training ends,
    so the model saved, evaluated and served is that checkpoint (train.checkpoint: best)."""

    def __init__(self, select_on: str) -> None:
        super().__init__()
        self.select_on = select_on
        self.best: float | None = None
        self.weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        values = [float(logs.get(k, math.nan)) for k in ("loss", "val_loss", "val_accuracy")]
        if not all(math.isfinite(v) for v in values):
            return
        score = -values[1] if self.select_on == "val_loss" else values[2]
        if self.best is None or score > self.best:
            self.best, self.weights = score, self.model.get_weights()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.weights is not None:
            self.model.set_weights(self.weights)


def fit(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    epochs: int,
    batch_size: int,
    callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: int | str = "auto",
    speed: Speed | None = None,
) -> dict[str, list[float]]:
    """Train on one-hot `train`, validating on `val` after each epoch; the per-epoch history.

    Shuffled each epoch by Keras (from the seed `seed_everything` set), as in the tutorial.
    Validation runs in batches of VALIDATION_BATCH: it only predicts, so the batch size does
    not change what is learned, and 313 batches of 32 (MNIST's test set) cost more than 10.
    Under `runtime.run` (every stage), SIGINT and SIGTERM end it after the current step (an epoch,
    by default) and that epoch's validation, and are raised then.

    With `speed.own_loop` (on by default), annlab's loop (annlab/train/loop.py) trains a model it
    supports, bit for bit as Keras' `fit` would, in less time; Keras' `fit` trains the rest,
    and every model when `speed` is None.
    """
    callbacks = [*(callbacks or []), StopWhenAsked()]  # last: sees what came during the others
    validation_batch = max(batch_size, VALIDATION_BATCH)
    with runtime.deferred_stop():  # Ctrl-C ends training between steps; raised once fit has returned
        if speed is not None and speed.own_loop and loop.supported(model):
            history: Any = loop.fit(
                model,
                train,
                val,
                epochs=epochs,
                batch_size=batch_size,
                validation_batch_size=validation_batch,
                callbacks=callbacks,
                verbose=verbose,
            )
        else:
            history = model.fit(
                *train,
                validation_data=val,
                epochs=epochs,
                batch_size=batch_size,
                shuffle=True,
                validation_batch_size=validation_batch,
                verbose=verbose,
                callbacks=callbacks,
            )
    return {k: [float(v) for v in values] for k, values in history.history.items()}


def reuse(previous: keras.Model | None, fresh: keras.Model, speed: Speed | None) -> keras.Model:
    """The model to train: `previous` (the cell's last seed's) set to the state `fresh` starts
    from, when annlab's loop trains both (`loop.reinitialize`: the same bits, and no second
    tracing of the training and validation graphs, a second of each digits run); else `fresh`."""
    if previous is None or speed is None or not speed.own_loop:
        return fresh
    if not (loop.supported(previous) and loop.supported(fresh)):
        return fresh
    return previous if loop.reinitialize(previous, fresh) else fresh


PREDICT_BATCH = 32  # Keras' `predict` default


def probabilities(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """The model's outputs for `x`, in Keras' `predict`'s batches of 32, each a plain (eager)
    call of the model: no traced predict function and tf.data pipeline, which cost 0.3 s per
    model loaded, ten times the digits test set's own prediction (evaluate loads one a run).

    Eager ops are not fused as `predict`'s graph fuses them, so the last bits can differ from
    `predict`'s (test losses moved by 1e-9, relative, on digits); evaluate, `annlab predict`
    and the served model all call this, so they agree exactly with each other."""
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating):
        x = x.astype(keras.backend.floatx(), copy=False)  # as Keras' data adapter casts it
    batches = [model(x[i : i + PREDICT_BATCH], training=False) for i in range(0, len(x), PREDICT_BATCH)]
    if not batches:
        return np.zeros((0, *model.output_shape[1:]), dtype=keras.backend.floatx())
    return np.concatenate([keras.ops.convert_to_numpy(b) for b in batches])


def load_model(path: Path) -> keras.Model:
    """A saved model, uncompiled, in Keras' safe mode: a file that holds Python code (a Lambda
    layer's function, which loading would run) is refused with a clear error."""
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except ValueError as exc:
        if "safe_mode" not in str(exc):
            raise
        raise UserError(
            f"{path}: refused: it holds Python code (e.g. a Lambda layer), which annlab never loads;"
            " train the cell again with `dvc repro --force`"
        ) from None
