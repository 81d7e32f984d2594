"""What every stage's entry point shares: the params file, and user errors without tracebacks."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from annlab.datasets import FetchError
from annlab.params import ParamsError

USER_ERRORS = (ParamsError, FetchError)


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the --params option every stage takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="the params file (default: %(default)s)")
    return p


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a stage's main; a user's mistake prints one clear message and exits with 2."""
    try:
        main(argv)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
