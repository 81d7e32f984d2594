"""How training runs, never what it computes: settings read from the environment.

They live outside params.yaml on purpose: with the defaults, every setting below leaves the
metrics bit for bit the same (tests/model/test_speed.py checks it), so changing one must not make
DVC retrain anything. The one exception, XLA, is off unless asked for and says so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from annlab.errors import UserError

STEPS_ENV = "ANNLAB_STEPS_PER_EXECUTION"
INTRA_ENV = "ANNLAB_INTRA_OP_THREADS"
INTER_ENV = "ANNLAB_INTER_OP_THREADS"
JIT_ENV = "ANNLAB_JIT_COMPILE"
LOOP_ENV = "ANNLAB_OWN_LOOP"


@dataclass(frozen=True)
class Speed:
    """Execution settings of Keras and TensorFlow (defaults: the fastest measured on 2 CPU cores).

    steps_per_execution: batches per call into TensorFlow's graph; 0 means a whole epoch. Keras
        otherwise returns to Python after every batch, which costs more than a small batch's math.
    intra_op_threads: threads inside one op (0: TensorFlow's default, all cores). One is fastest
        for small matmuls and leaves the other core to a second grid cell.
    inter_op_threads: ops run side by side (0: TensorFlow's default).
    own_loop: annlab's training loop (annlab/train/loop.py), Keras' `fit` in fewer ops per step, for
        the optimizers and settings it supports; Keras' `fit` otherwise, or when off.
    jit_compile: XLA. About 1.3x faster here, but it fuses ops and so rounds differently:
        metrics change in the last bits, which is why it is not a default.
    """

    steps_per_execution: int = 0
    intra_op_threads: int = 1
    inter_op_threads: int = 2
    own_loop: bool = True
    jit_compile: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Speed:
        """The settings given by ANNLAB_* environment variables, defaults for the rest."""
        env = os.environ if env is None else env
        default = cls()
        return cls(
            steps_per_execution=_count(env, STEPS_ENV, default.steps_per_execution),
            intra_op_threads=_count(env, INTRA_ENV, default.intra_op_threads),
            inter_op_threads=_count(env, INTER_ENV, default.inter_op_threads),
            own_loop=_flag(env, LOOP_ENV, default.own_loop),
            jit_compile=_flag(env, JIT_ENV, default.jit_compile),
        )

    def steps(self, n_samples: int, batch_size: int) -> int:
        """The steps per execution for a training set: a whole epoch when left at 0."""
        return self.steps_per_execution or max(1, -(-n_samples // batch_size))

    def tags(self) -> dict[str, str]:
        """The settings as MLflow tags (not params: they do not change what is computed)."""
        return {f"annlab.speed.{k}": str(v).lower() for k, v in vars(self).items()}


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise UserError(f"environment variable {name}={raw!r}: expected a whole number >= 0 (0: default)")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in {"0", "1", "true", "false"}:
        raise UserError(f"environment variable {name}={raw!r}: expected 0, 1, true or false")
    return raw in {"1", "true"}
