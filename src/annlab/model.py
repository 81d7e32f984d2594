"""Build the tutorial's ANN and its optimizer from params (imports Keras: train/evaluate only)."""

from __future__ import annotations

import keras

from annlab.params import OptimizersParams, Params

LOSSES = {"categorical_crossentropy": "categorical_crossentropy", "mse": "mean_squared_error"}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TensorFlow's ops deterministic."""
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_model(n_features: int, n_classes: int, hidden_units: list[int], activation: str) -> keras.Model:
    """Dense layers with `activation`, then a softmax output, as in the tutorial."""
    layers = [keras.Input(shape=(n_features,), name="features")]
    for i, units in enumerate(hidden_units, start=1):
        layers.append(keras.layers.Dense(units, activation=activation, name=f"hidden_{i}"))
    layers.append(keras.layers.Dense(n_classes, activation="softmax", name="output"))
    return keras.Sequential(layers, name="ann")


def make_optimizer(name: str, optimizers: OptimizersParams) -> keras.optimizers.Optimizer:
    """The named Keras optimizer with its hyperparameters from `optimizers.<name>`."""
    classes = {
        "sgd": keras.optimizers.SGD,
        "adam": keras.optimizers.Adam,
        "rmsprop": keras.optimizers.RMSprop,
    }
    return classes[name](**getattr(optimizers, name).model_dump())


def compiled_model(params: Params, n_features: int, n_classes: int) -> keras.Model:
    """The model of one run, compiled with its optimizer, loss and accuracy metric."""
    model = build_model(n_features, n_classes, params.model.hidden_units, params.model.activation)
    model.compile(
        optimizer=make_optimizer(params.train.optimizer, params.optimizers),
        loss=LOSSES[params.train.loss],
        metrics=["accuracy"],
    )
    return model
