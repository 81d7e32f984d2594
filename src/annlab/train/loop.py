"""annlab's own training loop: Keras' `fit`, bit for bit, in fewer TensorFlow ops per step.

On 2 CPU cores a batch of 32 costs less arithmetic than TensorFlow's dispatch of the train
step's ops one by one, and most of Keras' ops are bookkeeping around the math. This loop
keeps Keras' own forward pass, loss, gradients, metrics, callbacks and validation, and does
the rest in fewer ops, with the same arithmetic in the same order, so that the same seed
gives the same bits (tests/model/test_speed.py compares it with `fit` for every optimizer):

- the optimizer's update is written out: Keras computes its step size again for each weight
  tensor and wraps each update in casts and a distribution strategy's dispatch;
- the batches are gathered in the graph, in Keras' own order, from the epoch's permutation,
  where Keras' `tf.data` pipeline hands each batch over from another thread (0.3 s of a
  1.6 s epoch in a probe, benchmarks/train_step_probes.py);
- the loss tracker (a Mean weighted by the batch's size) is updated without Keras' broadcasting;
- the epoch's permutation is drawn once (Keras' shuffle draws the same one from each new
  iterator) and the validation batches come from a plain dataset: a new iterator over Keras'
  array pipeline costs 20-40 ms, and `fit` makes three an epoch, a third of a digits run;
- the graph that runs an epoch's steps is traced once per model, and a cell's next seed
  trains on the same model reset to a fresh one's starting state (`reinitialize`), so it is
  not traced again (about a second of each digits run).

`supported` says when it applies (annlab's optimizers and settings, on CPU); otherwise
`annlab.train.model.fit` calls Keras' `fit`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras.src.backend.tensorflow.trainer import TensorFlowTrainer, TFEpochIterator
from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter

# The Keras this loop was checked against, bit for bit (tests/model/test_speed.py): it reads Keras'
# internals (the optimizers' slots, the loss tracker, the array data adapter), so another
# version goes to Keras' `fit` until the test has passed on it and this line is changed.
KERAS_VERSIONS = ("3.15.",)

Update = Callable[[list[tf.Tensor], list[tf.Variable]], None]


def supported(model: keras.Model) -> bool:
    """Whether this loop trains `model` as Keras' `fit` would: a checked Keras, an optimizer
    it writes out and none of the options it leaves out, float32 throughout, Keras' own train
    step and metrics, graph mode on CPU without XLA or a distribution strategy."""
    opt = model.optimizer
    return (
        keras.version().startswith(KERAS_VERSIONS)
        and keras.backend.backend() == "tensorflow"
        and opt is not None
        and _update_maker(opt) is not None
        and opt.weight_decay is None
        and opt.clipnorm is None
        and opt.clipvalue is None
        and opt.global_clipnorm is None
        and not opt.use_ema
        and not opt.gradient_accumulation_steps
        and opt.loss_scale_factor is None
        and isinstance(opt.learning_rate, keras.Variable | tf.Variable)  # not a schedule
        and model.dtype_policy.name == "float32"
        and all(v.dtype == "float32" and v.constraint is None for v in model.trainable_variables)
        and model._compile_metrics is not None
        and type(model).train_step is TensorFlowTrainer.train_step
        and type(model).compute_metrics is TensorFlowTrainer.compute_metrics
        and not model.run_eagerly
        and not model.jit_compile
        and not tf.distribute.has_strategy()
        and not tf.config.list_physical_devices("GPU")
    )


def _update_maker(opt: keras.optimizers.Optimizer) -> Callable[..., Update] | None:
    """What writes out `opt`'s update, or None."""
    if type(opt) is keras.optimizers.Adam and not opt.amsgrad:
        return _adam
    if type(opt) is keras.optimizers.SGD:
        return _sgd
    if type(opt) is keras.optimizers.RMSprop and not opt.centered:
        return _rmsprop
    return None


# The updates below repeat the arithmetic of Keras' `update_step` (keras/src/optimizers/), op
# for op: Python floats such as `1 - beta_1` are rounded to float32 as Keras' ops round them.
# `slots(name, var)` is the optimizer's slot variable `name` for the weight `var`.


def _adam(opt: keras.optimizers.Adam, slots: Callable[[str, Any], tf.Variable]) -> Update:
    def update(grads: list[tf.Tensor], variables: list[tf.Variable]) -> None:
        lr = tf.cast(opt.learning_rate, tf.float32)
        step = tf.cast(opt.iterations + 1, tf.float32)
        beta_1_power = tf.pow(tf.constant(opt.beta_1, tf.float32), step)
        beta_2_power = tf.pow(tf.constant(opt.beta_2, tf.float32), step)
        alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        for g, var in zip(grads, variables, strict=True):
            m, v = slots("_momentums", var), slots("_velocities", var)
            m.assign_add((g - m) * (1 - opt.beta_1))
            v.assign_add((tf.square(g) - v) * (1 - opt.beta_2))
            var.assign_sub((m * alpha) / (tf.sqrt(v) + opt.epsilon))

    return update


def _sgd(opt: keras.optimizers.SGD, slots: Callable[[str, Any], tf.Variable]) -> Update:
    def update(grads: list[tf.Tensor], variables: list[tf.Variable]) -> None:
        lr = tf.cast(opt.learning_rate, tf.float32)
        for g, var in zip(grads, variables, strict=True):
            if opt.momentum == 0:
                var.assign_sub(g * lr)
                continue
            m, momentum = slots("momentums", var), tf.constant(opt.momentum, tf.float32)
            m.assign(m * momentum - g * lr)
            var.assign_add(m * momentum - g * lr if opt.nesterov else m)

    return update


def _rmsprop(opt: keras.optimizers.RMSprop, slots: Callable[[str, Any], tf.Variable]) -> Update:
    def update(grads: list[tf.Tensor], variables: list[tf.Variable]) -> None:
        lr = tf.cast(opt.learning_rate, tf.float32)
        for g, var in zip(grads, variables, strict=True):
            velocity = slots("_velocities", var)
            velocity.assign(opt.rho * velocity + (1 - opt.rho) * tf.square(g))
            increment = (lr * g) / tf.sqrt(velocity + opt.epsilon)
            if opt.momentum > 0:
                m = slots("_momentums", var)
                m.assign(opt.momentum * m + increment)
                increment = m
            var.assign_sub(increment)

    return update


def _tf(v: Any) -> tf.Variable:
    """The tf.Variable behind a Keras variable (whose own assign ops add a cast and a check)."""
    return v.value if isinstance(v, keras.Variable) else v


def _train_step(model: keras.Model) -> Callable[[tf.Tensor, tf.Tensor], None]:
    """Keras' `train_step` (keras/src/backend/tensorflow/trainer.py) in fewer ops: its forward
    pass, loss and gradients, the optimizer's update written out, the metrics' updates."""
    opt = model.optimizer
    opt.build(model.trainable_variables)
    weights = model.trainable_variables

    def slots(name: str, var: tf.Variable) -> tf.Variable:
        # As Keras finds them: by the weight's index in the optimizer's own list.
        keras_var = next(w for w in weights if _tf(w) is var)
        return _tf(getattr(opt, name)[opt._get_variable_index(keras_var)])

    update = _update_maker(opt)(opt, slots)
    iterations = _tf(opt.iterations)
    loss_total, loss_count = _tf(model._loss_tracker.total), _tf(model._loss_tracker.count)

    def step(x: tf.Tensor, y: tf.Tensor) -> None:
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
        size = tf.cast(tf.shape(x)[0], tf.float32)
        loss_total.assign_add(loss * size)
        loss_count.assign_add(size)
        variables = [_tf(w) for w in weights]
        update(tape.gradient(loss, variables), variables)
        iterations.assign_add(1)
        model._compile_metrics.update_state(y, y_pred)

    return step


Runner = Callable[[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor], None]
_RUNNERS: weakref.WeakKeyDictionary[keras.Model, dict[int, Runner]] = weakref.WeakKeyDictionary()


def _runner(model: keras.Model, batch_size: int) -> Runner:
    """The graph that runs `count` steps from step `first` of an epoch, traced once per model
    and batch size: a model trained again (the next seed of a cell, `reinitialize`) reuses it,
    where tracing it anew costs about a second, a third of a digits run."""
    runners = _RUNNERS.setdefault(model, {})
    if batch_size not in runners:
        step = _train_step(model)

        @tf.function(autograph=False)
        def run(
            order: tf.Tensor, first: tf.Tensor, count: tf.Tensor, features: tf.Tensor, targets: tf.Tensor
        ) -> None:
            def body(i: tf.Tensor) -> tuple[tf.Tensor]:
                batch = order[i * batch_size : (i + 1) * batch_size]
                step(tf.gather(features, batch), tf.gather(targets, batch))
                return (i + 1,)

            tf.while_loop(lambda i: i < first + count, body, (first,))

        runners[batch_size] = run
    return runners[batch_size]


def reinitialize(model: keras.Model, fresh: keras.Model) -> bool:
    """Give `model` the state `fresh` starts from, `fresh` being the same network with the same
    optimizer built and compiled anew (from the next seed): its weights and other variables
    (dropout's seed state), a new optimizer's variables, and no metrics. Trained again, `model`
    then learns what `fresh` would, bit for bit, in graphs already traced. False, and `model`
    untouched, when the two differ in any variable's shape or in steps per execution."""
    fresh.optimizer.build(fresh.trainable_variables)
    pairs = [
        *zip(model.variables, fresh.variables, strict=False),
        *zip(model.optimizer.variables, fresh.optimizer.variables, strict=False),
    ]
    if (
        len(model.variables) != len(fresh.variables)
        or len(model.optimizer.variables) != len(fresh.optimizer.variables)
        or model.steps_per_execution != fresh.steps_per_execution
        or any(a.shape != b.shape or a.dtype != b.dtype for a, b in pairs)
    ):
        return False
    for mine, theirs in pairs:
        mine.assign(theirs)
    model.reset_metrics()
    return True


def _epoch_order(n: int) -> tf.data.Dataset:
    """Each element: the order of one epoch's samples, as Keras' `fit` draws it.

    Keras' array data adapter (the one `fit` uses for arrays) on the indices 0..n-1 in one
    batch: its shuffle is a seeded op in a `tf.data` function of its own, whatever the batch
    size, so the same code draws the same permutation, epoch after epoch, as `fit`'s, which
    cuts it into batches in order (tests/model/test_speed.py checks the bits).
    """
    return ArrayDataAdapter(np.arange(n), batch_size=n, shuffle=True).get_tf_dataset()


def _floats(a: np.ndarray) -> np.ndarray:
    """Floating arrays in Keras' float type, as Keras' data adapter casts them."""
    a = np.asarray(a)
    return a.astype(keras.backend.floatx()) if np.issubdtype(a.dtype, np.floating) else a


def fit(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None,
    *,
    epochs: int,
    batch_size: int,
    validation_batch_size: int,
    callbacks: list[keras.callbacks.Callback],
    verbose: int | str,
) -> keras.callbacks.History:
    """Keras' `fit(*train, validation_data=val, shuffle=True, ...)` for a `supported` model.

    As Keras' TensorFlow trainer runs it: the same callbacks at the same points with the same
    logs, the same validation after each epoch (none if `val` is None), `steps_per_execution`
    batches per call into TensorFlow; Keras' History.
    """
    x, y = (_floats(a) for a in train)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} training samples but {len(y)} targets")
    n, per_call = len(x), model.steps_per_execution
    steps = -(-n // batch_size)
    run = _runner(model, batch_size)
    features, targets = tf.constant(x), tf.constant(y)

    callback_list = keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=verbose != 0,
        verbose=verbose,
        epochs=epochs,
        steps=steps,
        model=model,
    )
    orders = _epoch_order(n)
    model.stop_training = False
    logs: dict[str, Any] = {}
    try:
        # Validation reuses one epoch iterator over `val`, as Keras' `fit` does (a new one per
        # epoch costs 50 ms of a 1.3 s MNIST epoch).
        model._eval_epoch_iterator = None
        if val is not None:
            # The batches Keras' array adapter cuts, from a plain dataset: `evaluate` makes two
            # tf.data iterators an epoch, 2 ms each over it, 20-40 ms over the adapter's.
            batches = tf.data.Dataset.from_tensor_slices(tuple(_floats(a) for a in val))
            model._eval_epoch_iterator = TFEpochIterator(
                x=batches.batch(validation_batch_size),
                distribute_strategy=model.distribute_strategy,
                steps_per_execution=per_call,
                shuffle=False,
            )
        # Keras' shuffle draws the same permutation from each new iterator of its dataset, so
        # each of `fit`'s epochs has the same order: drawn once here (a new tf.data iterator
        # costs 10-20 ms, a tenth of a digits epoch).
        order = next(iter(orders))
        callback_list.on_train_begin()
        for epoch in range(epochs):
            model.reset_metrics()
            callback_list.on_epoch_begin(epoch)
            for first in range(0, steps, per_call):
                callback_list.on_train_batch_begin(first)
                run(order, tf.constant(first), tf.constant(min(per_call, steps - first)), features, targets)
                callback_list.on_train_batch_end(first + per_call - 1, model.get_metrics_result())
                if model.stop_training:
                    break
            logs = dict(model.get_metrics_result())
            if val is not None:
                val_logs = model.evaluate(
                    *val,
                    batch_size=validation_batch_size,
                    callbacks=callback_list,
                    return_dict=True,
                    _use_cached_eval_dataset=True,
                )
                logs.update({f"val_{name}": value for name, value in val_logs.items()})
            callback_list.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
    finally:
        model._eval_epoch_iterator = None
    model.optimizer.finalize_variable_values(model.trainable_weights)
    callback_list.on_train_end(logs=logs)
    return model.history
