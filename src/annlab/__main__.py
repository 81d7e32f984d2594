"""The `annlab` command. `annlab sync`: upload to MLflow the runs of the workspace's grid that
the store lacks (trained offline, or while the tracking server was down), from the DVC outputs."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import yaml

from annlab import cli
from annlab.errors import UserError

REPORT_MODULE = "annlab.stages.report"


def report_argv(dvc_yaml: Path) -> list[str]:
    """The report stage's arguments as dvc.yaml gives them: the paths of every output to sync."""
    try:
        cmd = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]["report"]["cmd"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise UserError(f"{dvc_yaml}: no readable stages.report.cmd ({type(exc).__name__}: {exc})") from None
    argv = shlex.split(cmd)
    if REPORT_MODULE not in argv:
        raise UserError(f"{dvc_yaml}: stages.report.cmd does not run {REPORT_MODULE}: {cmd!r}")
    return argv[argv.index(REPORT_MODULE) + 1 :]


def sync(argv: list[str] | None) -> None:
    """Upload the missing runs: the report stage's MLflow part, on the outputs already written.

    Every run is found by its key first, so a sync uploads only what is missing and a second
    sync uploads nothing.
    """
    p = argparse.ArgumentParser(prog="annlab sync", description=sync.__doc__.splitlines()[0])
    p.add_argument(
        "--dvc-yaml", type=Path, default=Path("dvc.yaml"), help="the pipeline (default: %(default)s)"
    )
    p.add_argument("--params", default="params.yaml", help="the params file (default: %(default)s)")
    args = p.parse_args(argv)

    from annlab.stages import report

    report.main([*report_argv(args.dvc_yaml), "--params", args.params, "--mlflow-only"])


COMMANDS = {"sync": sync}


def main() -> None:
    """`annlab <command> [options]`."""
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: annlab {{{','.join(COMMANDS)}}} [options]\n\n{__doc__}", file=sys.stderr)
        sys.exit(2)
    cli.run(COMMANDS[sys.argv[1]], sys.argv[2:])


if __name__ == "__main__":
    main()
