"""Stage `fetch`: write the raw dataset (images and labels) once to data/raw/<dataset>/."""

from __future__ import annotations

from pathlib import Path

from annlab import cli, datasets, io
from annlab.params import load_params


def main(argv: list[str] | None = None) -> None:
    """Load or download the dataset named in params and save it as .npy arrays."""
    p = cli.parser(__doc__)
    p.add_argument("--out", type=Path, required=True, help="folder for images.npy and labels.npy")
    args = p.parse_args(argv)
    params = load_params(args.params)
    images, labels = datasets.load(params.data.dataset)
    with io.atomic_path(args.out) as tmp:
        io.save_arrays(tmp, {"images": images, "labels": labels})
    print(f"fetch: {params.data.dataset}: {len(labels)} images of {images.shape[1:]} -> {args.out}")


if __name__ == "__main__":
    cli.run(main)
