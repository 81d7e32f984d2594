"""Pipeline stages, one module per DVC stage; each is run as `python -m annlab.stages.<name>`.

dvc.yaml calls `python` by name, so a `dvc repro` run outside the project's environment
(`.venv/bin/dvc repro` without activating `.venv`) starts the stages with whatever `python`
is first on PATH. Rather than let the first stage that imports TensorFlow or scikit-learn fail
with a traceback, every stage first checks that its interpreter has annlab's dependencies.
"""

from __future__ import annotations

import importlib.util
import sys

# Import names of the packages the stages import (pyproject.toml's dependencies).
REQUIRED = ("numpy", "yaml", "pydantic", "pandas", "sklearn", "matplotlib", "pooch", "mlflow", "tensorflow")


def missing_dependencies(names: tuple[str, ...] = REQUIRED) -> list[str]:
    """The import names among `names` that this interpreter cannot find (without importing them)."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def require_environment() -> None:
    """Exit with one line saying how to run the pipeline when annlab's dependencies are missing."""
    if missing := missing_dependencies():
        sys.exit(
            f"error: {sys.executable} lacks annlab's dependencies ({', '.join(missing)}): "
            "run the pipeline with `make repro`, or `source .venv/bin/activate` first"
        )


require_environment()
