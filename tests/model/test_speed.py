"""Speed settings change how fast training runs, never what it computes: the same seed gives
the same history and predictions, bit for bit, with and without each of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from annlab.errors import UserError
from annlab.run.repro import lanes
from annlab.train.speed import INTER_ENV, INTRA_ENV, JIT_ENV, LOOP_ENV, STEPS_ENV, Speed

# Three Gaussian blobs of 8 features, one-hot labels: 100 samples to train on, 30 to validate.
BLOBS = """
rng = np.random.default_rng(0)
centers = rng.normal(0, 2, size=(3, 8))
def split(n):
    y = np.arange(n) % 3
    return (centers[y] + rng.normal(0, 1, size=(n, 8))).astype("float32"), one_hot(y, 3)
(x, y), (xv, yv) = split(100), split(30)
"""

# Trains the default ANN (or, edited, another architecture) on three Gaussian blobs (3 epochs,
# batch 16, so the last batch of an epoch is partial) in a fresh process, so the thread
# settings take effect; prints the history and a digest of the test predictions' bytes.
TRAIN = (
    """
import hashlib, json
import numpy as np
from annlab.train import model as m
from annlab.report.metrics import one_hot
from annlab.params import Params
from annlab.train.speed import Speed

speed = Speed.from_env()
m.configure(speed)
"""
    + BLOBS
    + """small = {"cnn": {"filters": [4]}, "lstm": {"units": [8]}}  # for images of 2x4
params = Params.model_validate({"train": {"epochs": 3, "batch_size": 16}, "model": small})
params = params.for_cell("ann", "adam", "relu")
m.seed_everything(7)
model = m.compiled_model(params, (2, 4), 3, speed, len(x))
history = m.fit(model, (x, y), (xv, yv), 3, 16, verbose=0, speed=speed)
probs = model.predict(xv, verbose=0)
print(json.dumps({"history": history, "predictions": hashlib.sha256(probs.tobytes()).hexdigest()}))
"""
)


def _train(script: str = TRAIN, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ANNLAB_")}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={**clean, "TF_CPP_MIN_LOG_LEVEL": "3", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


PLAIN = {STEPS_ENV: "1", INTRA_ENV: "0", INTER_ENV: "0", LOOP_ENV: "0"}


@pytest.fixture(scope="module")
def plain() -> dict:
    """No speed option: Keras' `fit`, one batch per call, TensorFlow's own thread pools (the
    tutorial's way)."""
    return _train(**PLAIN)


def test_the_default_speed_options_give_the_same_bits(plain: dict) -> None:
    fast = _train()
    assert fast == plain
    assert len(plain["history"]["loss"]) == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    "env",
    [
        {**PLAIN, LOOP_ENV: "1"},
        {STEPS_ENV: "3"},
        {STEPS_ENV: "3", LOOP_ENV: "0"},
        {STEPS_ENV: "0", INTRA_ENV: "2", INTER_ENV: "1"},
    ],
    ids=["own-loop", "3-steps-per-execution", "3-steps-per-execution-keras-fit", "two-intra-op-threads"],
)
def test_each_speed_option_alone_gives_the_same_bits(plain: dict, env: dict[str, str]) -> None:
    assert _train(**env) == plain


# Trains each case twice in one process from the same seed, with annlab's loop and with Keras'
# `fit`; prints, for each, the history, a digest of the predictions, every callback call with
# its logs, and whether annlab's loop ran. A case may set the training samples (`n`), the
# batches per call (`steps`) and the batch after which a callback stops training (`stop_at`).
COMPARE = (
    """
import hashlib, json
import keras
import numpy as np
from annlab.train import loop, model as m
from annlab.report.metrics import one_hot
from annlab.params import Params
from annlab.train.speed import Speed

m.configure(Speed())
"""
    + BLOBS
    + """ran = []
own_fit = loop.fit
loop.fit = lambda *args, **kwargs: ran.append(1) or own_fit(*args, **kwargs)

class Record(keras.callbacks.Callback):
    def __init__(self, stop_at):
        super().__init__()
        self.calls, self.batches, self.stop_at = [], 0, stop_at
    def _log(self, name, index, logs):
        self.calls.append([name, index, {k: float(v) for k, v in (logs or {}).items()}])
    def on_train_begin(self, logs=None): self._log("train_begin", None, logs)
    def on_epoch_begin(self, epoch, logs=None): self._log("epoch_begin", epoch, logs)
    def on_train_batch_begin(self, batch, logs=None): self._log("batch_begin", batch, logs)
    def on_train_batch_end(self, batch, logs=None):
        self._log("batch_end", batch, logs)
        self.batches += 1
        if self.batches == self.stop_at:
            self.model.stop_training = True
    def on_test_begin(self, logs=None): self._log("test_begin", None, logs)
    def on_test_end(self, logs=None): self._log("test_end", None, logs)
    def on_epoch_end(self, epoch, logs=None): self._log("epoch_end", epoch, logs)
    def on_train_end(self, logs=None): self._log("train_end", None, logs)

results = {}
for name, (cell, overrides, options) in json.loads(CASES).items():
    results[name] = []
    n = options.get("n", len(x))
    for own_loop in (True, False):
        speed = Speed(own_loop=own_loop, steps_per_execution=options.get("steps", 0))
        raw = {"train": {"epochs": 2, "batch_size": 16}, "model": {"cnn": {"filters": [4]}}}
        for section, values in overrides.items():
            raw[section] = {**raw.get(section, {}), **values}
        params = Params.model_validate(raw).for_cell(*cell)
        m.seed_everything(7)
        model = m.compiled_model(params, (2, 4), 3, speed, n)
        record = Record(options.get("stop_at"))
        before = len(ran)
        history = m.fit(model, (x[:n], y[:n]), (xv, yv), 2, 16, [record], verbose=0, speed=speed)
        probs = model.predict(xv, verbose=0)
        results[name].append({
            "history": history,
            "predictions": hashlib.sha256(probs.tobytes()).hexdigest(),
            "callbacks": record.calls,
            "own_loop": len(ran) > before,
            "eval_iterator_left": getattr(model, "_eval_epoch_iterator", None) is not None,
        })
print(json.dumps(results))
"""
)

# Every optimizer and option annlab's loop writes out, both losses, dropout's random masks,
# and the other architectures, with a 4-sample last batch in each epoch (100 samples); and
# batches of equal size, a step per call, and 3 steps per call stopped in an epoch's middle.
OWN_LOOP_CASES = {
    "sgd": (["ann", "sgd", "tanh"], {}, {}),
    "sgd-momentum": (["ann", "sgd", "relu"], {"optimizers": {"sgd": {"momentum": 0.9}}}, {}),
    "sgd-nesterov": (
        ["ann", "sgd", "relu"],
        {"optimizers": {"sgd": {"momentum": 0.9, "nesterov": True}}},
        {},
    ),
    "adam-mse-loss": (["ann", "adam", "sigmoid"], {"train": {"loss": "mse"}}, {}),
    "rmsprop": (["ann", "rmsprop", "relu"], {}, {}),
    "rmsprop-momentum": (["ann", "rmsprop", "tanh"], {"optimizers": {"rmsprop": {"momentum": 0.5}}}, {}),
    "dropout": (["ann", "adam", "relu"], {"model": {"ann": {"dropout": 0.3}}}, {}),
    "cnn": (["cnn", "rmsprop", "relu"], {}, {}),
    "rnn": (["rnn", "sgd", "tanh"], {}, {}),
    "equal-batches": (["ann", "adam", "relu"], {}, {"n": 96}),
    "a-step-per-call": (["ann", "sgd", "relu"], {"optimizers": {"sgd": {"momentum": 0.9}}}, {"steps": 1}),
    "3-steps-per-call-stopped": (["ann", "rmsprop", "relu"], {}, {"steps": 3, "stop_at": 5}),
}


@pytest.mark.slow
def test_annlab_loop_gives_keras_fit_bits_for_every_optimizer_and_architecture() -> None:
    script = f"CASES = {json.dumps(json.dumps(OWN_LOOP_CASES))}\n{COMPARE}"
    results = _train(script)
    assert set(results) == set(OWN_LOOP_CASES)
    for name, (own, keras_fit) in results.items():
        assert (own["own_loop"], keras_fit["own_loop"]) == (True, False), name
        assert own["history"] == keras_fit["history"], name
        assert own["predictions"] == keras_fit["predictions"], name
        assert own["callbacks"] == keras_fit["callbacks"], name
        assert not own["eval_iterator_left"], name
    # The cases are what they say: training stopped in the second epoch's middle (batches 0-2,
    # 3-5, 6 in each), and otherwise ran both epochs.
    stopped = [c[:2] for c in results["3-steps-per-call-stopped"][0]["callbacks"] if c[0] != "test_end"]
    assert (
        ["batch_end", 5] in stopped and ["epoch_end", 1] in stopped and ["batch_begin", 6] not in stopped[-8:]
    )
    assert all(len(r[0]["history"]["val_loss"]) == 2 for r in results.values())


@pytest.mark.parametrize(
    ("optimizer", "change"),
    [
        ("adam", lambda opt, model: setattr(opt, "amsgrad", True)),
        ("rmsprop", lambda opt, model: setattr(opt, "centered", True)),
        ("adam", lambda opt, model: setattr(opt, "weight_decay", 0.01)),
        ("sgd", lambda opt, model: setattr(opt, "clipnorm", 1.0)),
        ("adam", lambda opt, model: setattr(opt, "use_ema", True)),
        ("adam", lambda opt, model: setattr(model, "jit_compile", True)),
        ("sgd", lambda opt, model: setattr(model, "run_eagerly", True)),
        ("adam", lambda opt, model: setattr(model, "_compile_metrics", None)),
    ],
    ids=["amsgrad", "centered-rmsprop", "weight-decay", "clipnorm", "ema", "xla", "eager", "no-metrics"],
)
def test_annlab_loop_leaves_what_it_does_not_write_out_to_keras(optimizer: str, change: object) -> None:
    from annlab.params import Params
    from annlab.train import loop
    from annlab.train.model import compiled_model

    model = compiled_model(Params().for_cell("ann", optimizer, "relu"), (2, 4), 3)
    assert loop.supported(model)
    change(model.optimizer, model)
    assert not loop.supported(model)


def _script(model_type: str) -> str:
    script = TRAIN.replace('for_cell("ann"', f'for_cell("{model_type}"')
    assert script != TRAIN
    return script


@pytest.mark.slow
def test_an_lstm_gives_the_same_bits_too() -> None:
    script = _script("lstm")
    assert _train(script) == _train(script, **PLAIN)


@pytest.mark.slow
def test_a_cnn_gives_the_same_bits_at_the_same_thread_count() -> None:
    script = _script("cnn")
    fast = _train(script)
    assert _train(script, **{STEPS_ENV: "1", LOOP_ENV: "0"}) == fast  # Keras' fit: no change at all
    # oneDNN splits a convolution's work by thread, so the intra-op thread count (fixed, 1 by
    # default, rather than TensorFlow's "all cores") moves the last bits, and nothing more.
    other = _train(script, **{**PLAIN, INTRA_ENV: "2"})
    for key, values in fast["history"].items():
        assert values == pytest.approx(other["history"][key], rel=1e-5, abs=1e-6)


def test_a_different_seed_gives_different_bits(plain: dict) -> None:
    # The comparison above can fail: the digest does depend on the training.
    other = subprocess.run(
        [sys.executable, "-c", TRAIN.replace("seed_everything(7)", "seed_everything(8)")],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(other.stdout.strip().splitlines()[-1])["predictions"] != plain["predictions"]


def test_speed_is_read_from_the_environment() -> None:
    assert Speed.from_env({}) == Speed()
    speed = Speed.from_env({STEPS_ENV: "16", INTRA_ENV: "0", INTER_ENV: "4", JIT_ENV: "true"})
    assert speed == Speed(steps_per_execution=16, intra_op_threads=0, inter_op_threads=4, jit_compile=True)
    assert speed.tags()["annlab.speed.jit_compile"] == "true"
    assert Speed.from_env({LOOP_ENV: "0"}) == Speed(own_loop=False)


@pytest.mark.parametrize(("name", "raw"), [(STEPS_ENV, "-1"), (INTRA_ENV, "two"), (JIT_ENV, "yes")])
def test_a_bad_setting_names_the_variable(name: str, raw: str) -> None:
    with pytest.raises(UserError, match=f"{name}='{raw}'"):
        Speed.from_env({name: raw})


def test_zero_steps_per_execution_means_a_whole_epoch() -> None:
    assert Speed().steps(100, 16) == 7
    assert Speed(steps_per_execution=5).steps(100, 16) == 5


def test_stale_cells_are_dealt_round_robin() -> None:
    cells = [f"train@{c}" for c in "abcde"]
    assert lanes(cells, 2) == [["train@a", "train@c", "train@e"], ["train@b", "train@d"]]
    assert lanes(cells[:1], 2) == [["train@a"]]


# Trains seed 7 and then seed 8, the second as a cell's next seed is trained (`model.reuse`),
# and seed 8 on a model of its own; with dropout, so its seed state must be carried over too.
REUSE = (
    TRAIN.split("m.seed_everything(7)")[0].replace(
        'small = {"cnn"', 'small = {"ann": {"dropout": 0.2}, "cnn"'
    )
    + """
from annlab.train import loop

def train(seed, previous=None):
    m.seed_everything(seed)
    fresh = m.compiled_model(params, (8,), 3, speed, len(x))
    model = m.reuse(previous, fresh, speed)
    history = m.fit(model, (x, y), (xv, yv), 3, 16, verbose=0, speed=speed)
    probs = model.predict(xv, verbose=0).tobytes()
    weights = b"".join(w.tobytes() for w in model.get_weights())
    digests = {k: hashlib.sha256(v).hexdigest() for k, v in (("predictions", probs), ("weights", weights))}
    return model, {"history": history, **digests}

first, _ = train(7)
(runner,) = loop._RUNNERS[first].values()
traced = runner.experimental_get_tracing_count()
reused, again = train(8, first)
_, fresh = train(8)
print(json.dumps({"reused": reused is first, "again": again, "fresh": fresh,
                  "traced_again": runner.experimental_get_tracing_count() - traced}))
"""
)


@pytest.mark.slow
def test_the_next_seed_trains_the_same_bits_on_the_last_seeds_model_without_tracing_again() -> None:
    result = _train(REUSE)
    assert result["reused"]
    assert result["again"] == result["fresh"]
    assert result["traced_again"] == 0


# A cell's learning-rate trials and then its seeds train one after another on one model
# (`reuse`): a run at another learning rate must learn what a fresh model at that rate learns.
REUSE_LEARNING_RATE = (
    TRAIN.split("m.seed_everything(7)")[0]
    + """
import sys

def train(optimizer, learning_rate, previous=None):
    cell = params.for_cell("ann", optimizer, "relu").with_learning_rate(optimizer, learning_rate)
    m.seed_everything(7)
    fresh = m.compiled_model(cell, (8,), 3, speed, len(x))
    model = m.reuse(previous, fresh, speed)
    history = m.fit(model, (x, y), (xv, yv), 3, 16, verbose=0, speed=speed)
    weights = b"".join(w.tobytes() for w in model.get_weights())
    return model, {"history": history, "weights": hashlib.sha256(weights).hexdigest()}

out = {}
for optimizer in ("sgd", "adam", "rmsprop"):
    first, _ = train(optimizer, 0.001)
    reused, again = train(optimizer, 0.3, first)
    _, fresh = train(optimizer, 0.3)
    out[optimizer] = {"reused": reused is first, "same": again == fresh}
print(json.dumps(out))
"""
)


@pytest.mark.slow
def test_a_reused_model_at_another_learning_rate_learns_what_a_fresh_one_does() -> None:
    result = _train(REUSE_LEARNING_RATE)
    assert result == {o: {"reused": True, "same": True} for o in ("sgd", "adam", "rmsprop")}
