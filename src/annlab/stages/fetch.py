"""Stage `fetch`: write the raw dataset (samples, labels, class names) once to data/raw/<dataset>/."""

from __future__ import annotations

from pathlib import Path

from annlab import io, runtime
from annlab.data import datasets, owndata
from annlab.params import load_params


def main(argv: list[str] | None = None) -> None:
    """Load, download or read the dataset named in params, check it, and save it."""
    p = runtime.parser(__doc__)
    p.add_argument(
        "--out", type=Path, required=True, help="folder: info.json, labels.npy, x.npy or table.parquet"
    )
    args = p.parse_args(argv)
    params = load_params(args.params)
    data = params.data
    if data.builtin:
        images, labels = datasets.load(data.dataset)
        raw = owndata.OwnData("images", images, labels, datasets.CLASS_NAMES[data.dataset])
        source = data.dataset
    else:
        raw = owndata.read(data)
        owndata.check(raw, params, data.path)
        source = data.path
    with io.atomic_path(args.out) as tmp:
        owndata.save_raw(tmp, raw, source)
    print(f"fetch: {source}: {raw.describe()} -> {args.out}")


if __name__ == "__main__":
    runtime.run(main)
