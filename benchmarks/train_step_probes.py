"""Probes of the training step's cost, behind docs/performance.md's "what else was tried" table.

Each variant trains the benchmark's 784-128-64-10 MLP (batch 32, Adam, seed 42 unless --seed)
on the benchmark's 60,000 synthetic MNIST-shaped images (by default), prints its seconds per
epoch (median of epochs 2 onwards), whether its final weights are bit-identical to plain Keras
`fit`, and its final accuracy on 10,000 held-out images (a sixth of --samples), which shows
how far a variant that rounds differently drifts from Keras. Not part of `make bench`:

    .venv/bin/python benchmarks/train_step_probes.py [variant ...] [--seed N]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf
from bench import SEED, annlab_mlp_model, epoch_timer, scaled_mnist, stats, synthetic_mnist_arrays
from keras import ops

from annlab.train import loop as annloop
from annlab.train import model as annmodel
from annlab.train.speed import Speed

BATCH = 32
SINGLE_THREADED = "SINGLE_THREADED_EXECUTOR"
SHAPES = [(784, 128), (128,), (128, 64), (64,), (64, 10), (10,)]


class Run(NamedTuple):
    """What every variant trains on: epochs, the seed of its weights and shuffling, and
    (x, y, x_test, y_test) with images scaled to [0, 1] and one-hot labels."""

    epochs: int
    seed: int
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def data(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """n of the benchmark's synthetic MNIST-shaped images for training and n // 6 held out,
    scaled as annlab's preprocess does, with one-hot labels (the same for every variant)."""
    return scaled_mnist(synthetic_mnist_arrays(n, max(1, n // 6)))


def fused_adam(opt: keras.optimizers.Adam) -> None:
    """TensorFlow's one-kernel Adam update per weight (it rounds 1 - beta in float32)."""

    def handle(v: object) -> object:
        return v.handle if hasattr(v, "handle") else v.value.handle

    def update_step(gradient: tf.Tensor, variable: tf.Variable, learning_rate: tf.Tensor) -> None:
        dtype = variable.dtype
        step = tf.cast(opt.iterations + 1, dtype)
        i = opt._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=handle(variable),
            m=handle(opt._momentums[i]),
            v=handle(opt._velocities[i]),
            beta1_power=tf.pow(tf.cast(opt.beta_1, dtype), step),
            beta2_power=tf.pow(tf.cast(opt.beta_2, dtype), step),
            lr=tf.cast(learning_rate, dtype),
            beta1=tf.cast(opt.beta_1, dtype),
            beta2=tf.cast(opt.beta_2, dtype),
            epsilon=tf.cast(opt.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )

    opt.update_step = update_step


def hoisted_adam(opt: keras.optimizers.Adam) -> None:
    """Keras' Adam arithmetic, its step-size scalar computed once per step, not per weight."""

    def backend_update_step(grads: list, variables: list, learning_rate: tf.Tensor) -> None:
        dtype = variables[0].dtype
        step = ops.cast(opt.iterations + 1, dtype)
        beta_1_power = ops.power(ops.cast(opt.beta_1, dtype), step)
        beta_2_power = ops.power(ops.cast(opt.beta_2, dtype), step)
        alpha = ops.cast(learning_rate, dtype) * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        for g, variable in zip(grads, variables, strict=True):
            g = ops.cast(g, dtype)
            i = opt._get_variable_index(variable)
            m, v = opt._momentums[i], opt._velocities[i]
            opt.assign_add(m, ops.multiply(ops.subtract(g, m), 1 - opt.beta_1))
            opt.assign_add(v, ops.multiply(ops.subtract(ops.square(g), v), 1 - opt.beta_2))
            opt.assign_sub(variable, ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), opt.epsilon)))

    opt._backend_update_step = backend_update_step


def no_step_metrics(model: keras.Model) -> None:
    """No metric results per step: `fit` recomputes them from the metrics' state at the epoch's end."""
    step = type(model).train_step

    def train_step(batch: tuple) -> dict:
        return {name: tf.zeros(()) for name in step(model, batch)}

    model.train_step = train_step


def unrolled(model: keras.Model, steps: int = 8) -> None:
    """Keras' TensorFlow trainer runs `steps` train steps per iteration of its in-graph loop
    over the epoch, not one (its own, undocumented `unrolled_steps_per_execution`)."""
    model.unrolled_steps_per_execution = steps


def epoch_loop(model: keras.Model, executor: str = "", nested: bool = False) -> None:
    """A whole epoch per call as one plain in-graph loop over Keras' own iterator and
    train_step (Keras' own loop wraps each step in optionals and conditionals), run by
    `executor` ("": TensorFlow's default; SINGLE_THREADED runs each op inline rather than
    scheduling it, through `tf.experimental.function_executor_type`). Under that executor,
    TensorFlow keeps the loop a functional While, whose body misses the oneDNN rewrite of the
    matmuls; `nested` calls train_step as a function of its own, which gets it back, at the
    cost of a call per step."""
    steps = model.steps_per_execution
    step = tf.function(model.train_step, autograph=False) if nested else model.train_step

    @tf.function(autograph=False)
    def epoch(iterator: tf.data.Iterator) -> dict:
        def body(i: tf.Tensor) -> tuple[tf.Tensor]:
            step(iterator.get_next())
            return (i + 1,)

        tf.while_loop(lambda i: i < steps, body, (tf.constant(0),))
        return model.get_metrics_result()

    def train_function(iterator: tf.data.Iterator) -> dict:
        with tf.experimental.function_executor_type(executor):
            return epoch(iterator)

    # What Keras' fit calls: make_train_function(), then train_function(iterator) per epoch.
    model.make_train_function = lambda force=False: train_function
    model.train_function = train_function


def keras_fit(
    setup: Callable[[keras.Model, keras.optimizers.Adam], None], run: Run
) -> tuple[list, np.ndarray, float]:
    """annlab's model and Keras `fit` as annlab runs it (a whole epoch per call), after `setup`
    changed the model or optimizer; seconds per epoch, the final weights and test accuracy."""
    x, y, xt, yt = run.data
    model = annlab_mlp_model(len(x), run.seed, Speed())
    setup(model, model.optimizer)
    seconds: list[float] = []
    model.fit(
        x, y, batch_size=BATCH, epochs=run.epochs, shuffle=True, verbose=0, callbacks=[epoch_timer(seconds)]
    )
    _, accuracy = model.evaluate(xt, yt, batch_size=1024, verbose=0)
    return seconds, np.concatenate([w.ravel() for w in model.get_weights()]), float(accuracy)


def annlab_loop(run: Run) -> tuple[list, np.ndarray, float]:
    """annlab's own loop (annlab/loop.py), which `annlab.train.model.fit` runs by default, called
    directly, as `keras_fit` calls Keras' `fit`."""
    x, y, xt, yt = run.data
    speed = Speed()
    model = annlab_mlp_model(len(x), run.seed, speed)
    assert annloop.supported(model)
    seconds: list[float] = []
    annloop.fit(
        model,
        (x, y),
        None,
        epochs=run.epochs,
        batch_size=BATCH,
        validation_batch_size=1024,
        callbacks=[epoch_timer(seconds)],
        verbose=0,
    )
    _, accuracy = model.evaluate(xt, yt, batch_size=1024, verbose=0)
    return seconds, np.concatenate([w.ravel() for w in model.get_weights()]), float(accuracy)


def own_loop(run: Run) -> tuple[list, None, None]:
    """Keras' own train_step in a hand-written loop over batches shuffled in NumPy (no tf.data)."""
    x, y, _, _ = run.data
    n = len(x)
    model = annlab_mlp_model(n, run.seed, Speed(steps_per_execution=1))
    model.optimizer.build(model.trainable_variables)
    n_batches = n // BATCH

    @tf.function
    def epoch(xb: tf.Tensor, yb: tf.Tensor) -> None:
        def body(i: tf.Tensor) -> tuple[tf.Tensor]:
            model.train_step((xb[i], yb[i]))
            return (i + 1,)

        tf.while_loop(lambda i: i < n_batches, body, (tf.constant(0),))

    seconds = []
    for e in range(run.epochs):
        started = time.perf_counter()
        order = np.random.default_rng(e).permutation(n)[: n_batches * BATCH]
        epoch(
            tf.constant(x[order].reshape(n_batches, BATCH, 784)),
            tf.constant(y[order].reshape(n_batches, BATCH, 10)),
        )
        seconds.append(time.perf_counter() - started)
    return seconds, None, None


def plain_tf(run: Run) -> tuple[list, None, None]:
    """The same math written out in TensorFlow, no Keras, no metrics: the graph executor's floor."""
    x, y, _, _ = run.data
    n_batches = len(x) // BATCH
    xb = tf.constant(x[: n_batches * BATCH].reshape(n_batches, BATCH, 784))
    yb = tf.constant(y[: n_batches * BATCH].reshape(n_batches, BATCH, 10))
    rng = np.random.default_rng(run.seed)
    weights = [tf.Variable(rng.normal(size=s).astype(np.float32) * 0.05) for s in SHAPES]
    ms, vs = [tf.Variable(tf.zeros(s)) for s in SHAPES], [tf.Variable(tf.zeros(s)) for s in SHAPES]
    iterations = tf.Variable(0.0)

    @tf.function
    def epoch() -> None:
        def body(i: tf.Tensor) -> tuple[tf.Tensor]:
            w0, b0, w1, b1, w2, b2 = weights
            with tf.GradientTape() as tape:
                h = tf.nn.relu(tf.nn.relu(xb[i] @ w0 + b0) @ w1 + b1)
                loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(yb[i], h @ w2 + b2))
            grads = tape.gradient(loss, weights)
            t = iterations + 1.0
            iterations.assign(t)
            alpha = 0.001 * tf.sqrt(1 - tf.pow(0.999, t)) / (1 - tf.pow(0.9, t))
            for g, w, m, v in zip(grads, weights, ms, vs, strict=True):
                m.assign_add((g - m) * 0.1)
                v.assign_add((tf.square(g) - v) * 0.001)
                w.assign_sub(m * alpha / (tf.sqrt(v) + 1e-7))
            return (i + 1,)

        tf.while_loop(lambda i: i < n_batches, body, (tf.constant(0),))

    seconds = []
    for _ in range(run.epochs):
        started = time.perf_counter()
        epoch()
        seconds.append(time.perf_counter() - started)
    return seconds, None, None


def single_threaded(variant: Callable[[Run], tuple], run: Run) -> tuple:
    """A variant run by TensorFlow's single-threaded executor."""
    with tf.experimental.function_executor_type(SINGLE_THREADED):
        return variant(run)


VARIANTS: dict[str, Callable[[Run], tuple[list, np.ndarray | None, float | None]]] = {
    "keras": lambda run: keras_fit(lambda m, o: None, run),
    "annlab-loop": annlab_loop,
    "fused-adam": lambda run: keras_fit(lambda m, o: fused_adam(o), run),
    "hoisted-adam": lambda run: keras_fit(lambda m, o: hoisted_adam(o), run),
    "hoisted-adam-no-step-metrics": lambda run: keras_fit(
        lambda m, o: (hoisted_adam(o), no_step_metrics(m)), run
    ),
    "unrolled-8": lambda run: keras_fit(lambda m, o: unrolled(m), run),
    "epoch-loop": lambda run: keras_fit(lambda m, o: epoch_loop(m), run),
    "epoch-loop-single-threaded": lambda run: keras_fit(lambda m, o: epoch_loop(m, SINGLE_THREADED), run),
    "epoch-loop-single-threaded-nested-step": lambda run: keras_fit(
        lambda m, o: epoch_loop(m, SINGLE_THREADED, nested=True), run
    ),
    "own-loop": own_loop,
    "plain-tf": plain_tf,
    "plain-tf-single-threaded": lambda run: single_threaded(plain_tf, run),
}


def main() -> None:
    """Run the variants turn by turn and print seconds per epoch and whether the bits agree."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variants", nargs="*", help=f"any of {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--epochs", type=int, default=4, help="per run; the first (tracing) is not counted")
    p.add_argument("--samples", type=int, default=60_000, help="training images (MNIST: 60,000)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each variant, interleaved")
    p.add_argument(
        "--seed", type=int, default=SEED, help="of the weights and the shuffling (default: the benchmark's)"
    )
    p.add_argument("--inter-op-threads", type=int, default=Speed().inter_op_threads, help="default: annlab's")
    args = p.parse_args()
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; allowed: {', '.join(VARIANTS)}")
    names = args.variants or list(VARIANTS)
    annmodel.configure(Speed(inter_op_threads=args.inter_op_threads))
    run = Run(args.epochs, args.seed, data(args.samples))
    # The machine's speed drifts over minutes: the variants take turns, so a slow spell hits all.
    seconds: dict[str, list[float]] = {name: [] for name in names}
    same: dict[str, set[bool]] = {name: set() for name in names}
    accuracy: dict[str, list[float]] = {name: [] for name in names}
    reference = None
    for _ in range(args.rounds):
        for name in names:
            epochs, weights, acc = VARIANTS[name](run)
            seconds[name] += epochs[1:]
            accuracy[name] += [] if acc is None else [acc]
            if name == "keras" and reference is None:
                reference = weights  # the first run; Keras' later runs are compared with it
                continue
            if weights is not None and reference is not None:
                same[name].add(bool(np.array_equal(weights, reference)))
    print(
        f"s per epoch, median (min-max) of {args.rounds} runs x {args.epochs - 1} epochs; "
        f"{args.inter_op_threads} inter-op thread(s); seed {args.seed}"
    )
    for name in names:
        s = stats(seconds[name])
        bits = "n/a" if not same[name] else ("yes" if same[name] == {True} else "no")
        acc = f"{min(accuracy[name]):.4f}-{max(accuracy[name]):.4f}" if accuracy[name] else "n/a"
        print(
            f"{name}: {s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f}); same bits as keras: {bits}; "
            f"test accuracy: {acc}"
        )


if __name__ == "__main__":
    main()
