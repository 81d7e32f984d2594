"""Stage `validate`: check params.yaml, and the user's own data if it names some, before any
other stage runs (and so before DVC clears outputs)."""

from __future__ import annotations

from pathlib import Path

import yaml

from annlab import io, runtime
from annlab.params import load_params

# Constant on purpose: the stamp orders `validate` before `fetch` without making a valid
# edit to params.yaml look like a change to the stages downstream.
STAMP = "params.yaml validated; see dvc.yaml stage 'validate'\n"


def main(argv: list[str] | None = None) -> None:
    """Validate the params file and the data it names; write the stamp (without --stamp: only check)."""
    p = runtime.parser(__doc__)
    p.add_argument("--stamp", type=Path, help="file written when params are valid")
    p.add_argument(
        "--tuning",
        type=Path,
        help="YAML written with each optimizer's resolved tuning (learning rates tried, selection"
        " metric, tuning seed; null: one-shot), the params file the cells' stages track",
    )
    p.add_argument(
        "--params-only",
        action="store_true",
        help="check params.yaml only, not the data it names (the stage checks that when it changes)",
    )
    args = p.parse_args(argv)
    params = load_params(args.params, complete=True)
    if not params.data.builtin and not args.params_only:
        from annlab.data import owndata

        data = owndata.read(params.data)
        owndata.check(data, params, params.data.path)
        print(f"validate: {params.data.path}: {data.describe()}")
    if args.stamp:
        io.write_text(args.stamp, STAMP)
    if args.tuning:
        io.write_text(args.tuning, yaml.safe_dump(params.resolved_tuning(), sort_keys=True))


if __name__ == "__main__":
    runtime.run(main)
