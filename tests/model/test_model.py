"""Model tests: each architecture's layers and parameter counts, the optimizers, overfitting one
batch, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from annlab.errors import UserError
from annlab.params import Params, parse_params
from annlab.report import metrics
from annlab.train.model import build_model, compiled_model, make_optimizer, seed_everything

OPTIMIZERS = ["sgd", "adam", "rmsprop"]
ACTIVATIONS = ["relu", "tanh", "sigmoid"]
MODELS = ["ann", "cnn", "rnn", "lstm"]
DIGITS, MNIST = (8, 8), (28, 28)


def _dense(n_in: int, units: list[int]) -> int:
    """Weights and biases of a stack of dense layers, ending in the 10-class output."""
    total = 0
    for n_out in [*units, 10]:
        total += n_in * n_out + n_out
        n_in = n_out
    return total


def expected_params(model: str, shape: tuple[int, int]) -> int:
    """The parameter count of the default network of `model`, worked out by hand."""
    height, width = shape
    if model == "ann":
        return _dense(height * width, [64, 32])
    if model == "cnn":  # 3x3 kernels, 1 -> 64 -> 128 channels, each block halving the image
        convs = (3 * 3 * 1 * 64 + 64) + (3 * 3 * 64 * 128 + 128)
        return convs + _dense((height // 4) * (width // 4) * 128, [64, 32])
    gates = 1 if model == "rnn" else 4  # an LSTM has four gates, each a SimpleRNN's weights
    return gates * (width * 128 + 128 * 128 + 128) + _dense(128, [64, 32])


@pytest.mark.parametrize("shape", [DIGITS, MNIST], ids=["digits", "mnist"])
@pytest.mark.parametrize("model_type", MODELS)
def test_each_architecture_has_its_shapes_and_parameter_count(
    model_type: str, shape: tuple[int, int]
) -> None:
    params = Params().for_cell(model_type, "adam", "tanh")
    model = build_model(params.model, shape, 10)
    assert model.name == model_type
    assert model.count_params() == expected_params(model_type, shape)
    assert model.input_shape == (None, shape[0] * shape[1])  # the preprocessed, flat features
    layers = {layer.name: layer for layer in model.layers}
    if model_type == "cnn":
        assert layers["image"].output.shape == (None, *shape, 1)
        assert layers["pool_2"].output.shape == (None, shape[0] // 4, shape[1] // 4, 128)
    if model_type in ("rnn", "lstm"):
        assert layers["rows"].output.shape == (None, *shape)  # rows are the time steps
        assert layers[f"{model_type}_1"].output.shape == (None, 128)  # the last state only
    # The grid's activation everywhere but the softmax output (an LSTM's gates stay sigmoid).
    activations = [layer.activation.__name__ for layer in model.layers if hasattr(layer, "activation")]
    assert activations == ["tanh"] * (len(activations) - 1) + ["softmax"]
    probs = model.predict(
        np.random.default_rng(0).normal(size=(7, shape[0] * shape[1])).astype("float32"), verbose=0
    )
    assert probs.shape == (7, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)


def test_the_ann_is_the_tutorials_network() -> None:
    model = build_model(Params().model, DIGITS, 10)
    assert [layer.units for layer in model.layers] == [64, 32, 10]
    assert model.count_params() == (64 * 64 + 64) + (64 * 32 + 32) + (32 * 10 + 10)


@pytest.mark.parametrize(
    ("shape", "filters", "pooled"),
    [(MNIST, [8, 8, 8], (4, 4)), (DIGITS, [8, 8, 8, 8, 8], (1, 1)), ((7, 5), [8], (4, 3))],
    ids=["mnist-28-14-7-4", "digits-down-to-1x1", "odd-sides-round-up"],
)
def test_cnn_pooling_rounds_up_and_never_reaches_nothing(
    shape: tuple[int, int], filters: list[int], pooled: tuple[int, int]
) -> None:
    params = parse_params({"model": {"cnn": {"filters": filters}}}).for_cell("cnn", "adam", "relu")
    model = build_model(params.model, shape, 10)
    assert model.get_layer(f"pool_{len(filters)}").output.shape == (None, *pooled, 8)
    assert model.get_layer("flatten").output.shape == (None, pooled[0] * pooled[1] * 8)


def test_stacked_recurrent_layers_pass_sequences_and_dropout_follows_dense_layers() -> None:
    params = parse_params({"model": {"lstm": {"units": [16, 8], "dropout": 0.5}, "hidden_units": [12]}})
    model = build_model(params.for_cell("lstm", "adam", "relu").model, DIGITS, 10)
    names = [layer.name for layer in model.layers]
    assert names == ["rows", "lstm_1", "lstm_2", "hidden_1", "dropout_1", "output"]
    assert model.get_layer("lstm_1").output.shape == (None, 8, 16)  # the whole sequence
    assert model.get_layer("lstm_2").output.shape == (None, 8)
    assert model.get_layer("dropout_1").rate == 0.5
    # No dropout set: no dropout layers (the ANN stays the tutorial's).
    assert not any("dropout" in layer.name for layer in build_model(Params().model, DIGITS, 10).layers)


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


@pytest.mark.parametrize("model_type", MODELS)
# Each architecture meets every optimizer and every activation once (sgd-relu, adam-tanh, ...).
@pytest.mark.parametrize(("optimizer", "activation"), list(zip(OPTIMIZERS, ACTIVATIONS, strict=True)))
def test_every_cell_compiles_and_trains_a_step(model_type: str, optimizer: str, activation: str) -> None:
    params = parse_params({"model": {"cnn": {"filters": [4]}, "rnn": {"units": [4]}, "lstm": {"units": [4]}}})
    model = compiled_model(params.for_cell(model_type, optimizer, activation), (2, 4), 3)
    assert type(model.optimizer).__name__.lower() == optimizer
    x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
    history = model.fit(x, metrics.one_hot(np.arange(16) % 3, 3), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.fixture
def one_batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 64)).astype("float32"), rng.integers(0, 10, 32)


@pytest.mark.parametrize("model_type", MODELS)
def test_each_architecture_overfits_one_batch(
    model_type: str, one_batch: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = one_batch
    seed_everything(0)
    small = {"hidden_units": [32], "cnn": {"filters": [8]}, "rnn": {"units": [32]}, "lstm": {"units": [32]}}
    params = parse_params({"model": small, "optimizers": {"adam": {"learning_rate": 0.01}}})
    model = compiled_model(params.for_cell(model_type, "adam", "relu"), DIGITS, 10)
    target = metrics.one_hot(y, 10)
    first = model.train_on_batch(x, target, return_dict=True)
    for _ in range(150):
        last = model.train_on_batch(x, target, return_dict=True)
    assert last["accuracy"] == 1.0
    assert last["loss"] < 0.05 < first["loss"]


@pytest.mark.parametrize("loss", ["categorical_crossentropy", "mse"])
def test_our_test_loss_equals_keras(one_batch: tuple[np.ndarray, np.ndarray], loss: str) -> None:
    x, y = one_batch
    model = compiled_model(parse_params({"train": {"loss": loss}}), DIGITS, 10)
    keras_loss, _ = model.evaluate(x, metrics.one_hot(y, 10), verbose=0)
    assert metrics.loss(y, model.predict(x, verbose=0), loss) == pytest.approx(keras_loss, rel=1e-5)


def test_same_seed_same_weights(one_batch: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = one_batch

    def train(seed: int) -> list[np.ndarray]:
        seed_everything(seed)
        model = compiled_model(Params(), DIGITS, 10)
        model.fit(x, metrics.one_hot(y, 10), epochs=3, batch_size=8, verbose=0)
        return model.get_weights()

    first, again, other = train(7), train(7), train(8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("model_type", MODELS)
def test_rgb_images_give_the_cnn_three_channels_and_the_rnn_wider_rows(model_type: str) -> None:
    model = build_model(Params().for_cell(model_type, "adam", "relu").model, (8, 6, 3), 4)
    assert model.input_shape == (None, 8 * 6 * 3)  # flat features, as preprocess writes them
    layers = {layer.name: layer for layer in model.layers}
    if model_type == "cnn":
        assert layers["image"].output.shape == (None, 8, 6, 3)
        assert layers["conv_1"].count_params() == (3 * 3 * 3 + 1) * 64
    if model_type in ("rnn", "lstm"):
        assert layers["rows"].output.shape == (None, 8, 18)  # width x channels features a step


def test_a_table_trains_only_the_ann() -> None:
    assert build_model(Params().model, (13,), 3).input_shape == (None, 13)
    with pytest.raises(UserError, match=r"a cnn needs images .* these samples are \(13,\)"):
        build_model(Params().for_cell("cnn", "adam", "relu").model, (13,), 3)
