"""Model tests: the builder per optimizer and activation, overfitting one batch, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from annlab import metrics
from annlab.model import build_model, compiled_model, make_optimizer, seed_everything
from annlab.params import Params, parse_params

OPTIMIZERS = ["sgd", "adam", "rmsprop"]
ACTIVATIONS = ["relu", "tanh", "sigmoid"]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_builder_shapes_and_activations(activation: str) -> None:
    model = build_model(64, 10, [64, 32], activation)
    assert [layer.units for layer in model.layers] == [64, 32, 10]
    assert [layer.activation.__name__ for layer in model.layers] == [activation, activation, "softmax"]
    # The tutorial's 64-32-10 network on 64 features.
    assert model.count_params() == (64 * 64 + 64) + (64 * 32 + 32) + (32 * 10 + 10)
    probs = model.predict(np.random.default_rng(0).normal(size=(7, 64)).astype("float32"), verbose=0)
    assert probs.shape == (7, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_takes_its_own_hyperparameters(name: str) -> None:
    params = parse_params({"optimizers": {name: {"learning_rate": 0.0123}}})
    optimizer = make_optimizer(name, params.optimizers)
    assert type(optimizer).__name__.lower() == name
    assert float(optimizer.learning_rate) == pytest.approx(0.0123)
    if name == "sgd":
        sgd = parse_params({"optimizers": {"sgd": {"momentum": 0.9, "nesterov": True}}}).optimizers
        opt = make_optimizer("sgd", sgd)
        assert (opt.momentum, opt.nesterov) == (0.9, True)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_cell_compiles_and_trains_a_step(optimizer: str, activation: str) -> None:
    params = Params().for_cell(optimizer, activation)
    model = compiled_model(params, 8, 3)
    assert type(model.optimizer).__name__.lower() == optimizer
    x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
    history = model.fit(x, metrics.one_hot(np.arange(16) % 3, 3), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.fixture
def one_batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 64)).astype("float32"), rng.integers(0, 10, 32)


def test_tiny_network_overfits_one_batch(one_batch: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = one_batch
    seed_everything(0)
    params = parse_params({"model": {"hidden_units": [32]}, "optimizers": {"adam": {"learning_rate": 0.01}}})
    model = compiled_model(params, 64, 10)
    history = model.fit(x, metrics.one_hot(y, 10), epochs=100, batch_size=32, verbose=0)
    assert history.history["accuracy"][-1] == 1.0
    assert history.history["loss"][-1] < 0.05 < history.history["loss"][0]


@pytest.mark.parametrize("loss", ["categorical_crossentropy", "mse"])
def test_our_test_loss_equals_keras(one_batch: tuple[np.ndarray, np.ndarray], loss: str) -> None:
    x, y = one_batch
    model = compiled_model(parse_params({"train": {"loss": loss}}), 64, 10)
    keras_loss, _ = model.evaluate(x, metrics.one_hot(y, 10), verbose=0)
    assert metrics.loss(y, model.predict(x, verbose=0), loss) == pytest.approx(keras_loss, rel=1e-5)


def test_same_seed_same_weights(one_batch: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = one_batch

    def train(seed: int) -> list[np.ndarray]:
        seed_everything(seed)
        model = compiled_model(Params(), 64, 10)
        model.fit(x, metrics.one_hot(y, 10), epochs=3, batch_size=8, verbose=0)
        return model.get_weights()

    first, again, other = train(7), train(7), train(8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
