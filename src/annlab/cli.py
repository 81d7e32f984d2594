"""What every stage's entry point shares: the params file, and user errors without tracebacks."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from annlab.errors import UserError


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the --params option every stage takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="the params file (default: %(default)s)")
    return p


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a stage's main; a user's mistake prints one clear message and exits with 2."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before any stage imports TensorFlow
    try:
        main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
