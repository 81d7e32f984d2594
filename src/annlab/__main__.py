"""The `annlab` command.

`annlab sync`: upload to MLflow the runs of the workspace's grid that the store lacks (trained
offline, or while the tracking server was down), from the DVC outputs.
`annlab predict`: classify raw inputs with a trained model (a cell, a model folder, an MLflow
`models:/` or `runs:/` URI; default: the champion of params.yaml's dataset); one row per input
with the class name and each class's probability.
`annlab champion`: print the URI of the model in use for params.yaml's dataset,
`models:/annlab-<dataset>@champion` (what `make serve` serves)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from annlab import runtime
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


def predict(argv: list[str] | None) -> None:
    """Classify raw inputs with a trained model; print the accuracy when they carry labels."""
    p = argparse.ArgumentParser(prog="annlab predict", description=predict.__doc__.splitlines()[0])
    p.add_argument(
        "--model",
        help="a cell (ann-adam-relu; with --seed), a folder models/<cell>/seed-<n>, "
        "models:/<name>@champion or models:/<name>/<version>, or runs:/<run id>/model; default: the "
        "champion of params.yaml's dataset (`annlab champion` prints it)",
    )
    p.add_argument("--params", default="params.yaml", help="for the default --model (default: %(default)s)")
    p.add_argument(
        "--input",
        required=True,
        type=Path,
        nargs="+",
        help="tables: a .csv or .parquet file; images: an .npy or .npz (x, and y if labelled), "
        "image files, or a folder of images (with one subfolder per class: labelled)",
    )
    p.add_argument(
        "--output", type=Path, help="write the predictions here (.csv or .parquet); default: stdout"
    )
    p.add_argument(
        "--seed", type=int, help="with a cell name: the seed's model (default: the cell's model in use)"
    )
    p.add_argument(
        "--models", type=Path, default=Path("models"), help="train's output (default: %(default)s)"
    )
    args = p.parse_args(argv)

    import numpy as np

    from annlab import io
    from annlab.serve import served

    ref = args.model or champion_uri(args.params)
    if ref == LEGACY_CHAMPION:
        ref = legacy_champion(args.params)
    predictor, source = load_predictor(ref, args.seed, args.models)
    where = " ".join(map(str, args.input))
    if len(args.input) > 1 and (predictor.is_table or any(p.is_dir() for p in args.input)):
        raise UserError(f"--input {where}: several inputs must be image files; give one table or folder")
    parts = [served.read_inputs(path, predictor) for path in args.input]
    if len(parts) == 1:
        x, labels = parts[0]
    else:
        x, labels = np.concatenate([x for x, _ in parts]), None
    try:
        out, warnings = predictor.predict_checked(x)
    except served.InputError as exc:
        raise served.InputError(f"{where}: {exc}") from None
    for line in warnings:  # the predictions still come out
        print(f"warning: {where}: inputs unlike the training data: {line}", file=sys.stderr)
    notes = sys.stdout if args.output else sys.stderr  # stdout may be the CSV itself
    print(f"predict: {source}: {len(out)} inputs from {where}", file=notes)
    if labels is not None and (labels >= 0).any():
        known = labels >= 0  # rows whose label is empty are predicted, not scored
        names = np.asarray(predictor.class_names, dtype=object)
        correct = int((out["predicted"].to_numpy()[known] == names[labels[known]]).sum())
        n = int(known.sum())
        unlabelled = f"; {len(out) - n} rows without a label" if n < len(out) else ""
        print(f"predict: accuracy {correct / n:.4f} ({correct}/{n} correct{unlabelled})", file=notes)
    if args.output is None:
        sys.stdout.write(out.to_csv(index=False, lineterminator="\n"))
    elif args.output.suffix.lower() in (".parquet", ".pq"):
        with io.atomic_path(args.output) as tmp:
            out.to_parquet(tmp, index=False)
    else:
        io.write_text(args.output, out.to_csv(index=False, lineterminator="\n"))


def champion_uri(params_path: str) -> str:
    """The model in use for the workspace's dataset: `models:/<registered model>@champion`."""
    from annlab.params import load_params

    return f"models:/{load_params(params_path).registered_model}@champion"  # registry.CHAMPION


LEGACY_CHAMPION = "models:/annlab@champion"  # one registered model for every dataset, before annlab-<dataset>


def legacy_champion(params_path: str) -> str:
    """`models:/annlab@champion` where the registry still has a model `annlab` (registered by an
    earlier annlab); else the champion of params.yaml's dataset, which took its place."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from annlab.track import tracking

    mlflow.set_tracking_uri(tracking.tracking_uri())
    try:
        mlflow.MlflowClient().get_registered_model("annlab")
        return LEGACY_CHAMPION
    except MlflowException:
        uri = champion_uri(params_path)
        print(
            f"predict: no registered model 'annlab': {uri}, the champion of {params_path}'s dataset",
            file=sys.stderr,
        )
        return uri


def champion(argv: list[str] | None) -> None:
    """Print the URI of the model in use for params.yaml's dataset (what `make serve` serves)."""
    p = argparse.ArgumentParser(prog="annlab champion", description=champion.__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml", help="the params file (default: %(default)s)")
    print(champion_uri(p.parse_args(argv).params))


def load_predictor(ref: str, seed: int | None, models: Path) -> tuple[Any, str]:
    """The predictor `ref` names, and how to say where it came from."""
    from annlab import io
    from annlab.serve import served

    if ref.startswith(("models:/", "runs:/")):
        import mlflow

        from annlab.track import tracking

        mlflow.set_tracking_uri(tracking.tracking_uri())  # the project's store, or $MLFLOW_TRACKING_URI
        try:
            model = mlflow.pyfunc.load_model(ref)
        except mlflow.exceptions.MlflowException as exc:
            raise UserError(f"--model {ref}: {exc.message}") from None
        python_model = model.unwrap_python_model()
        if not hasattr(python_model, "predictor"):
            raise UserError(f"--model {ref}: not an annlab model (it takes no raw inputs)")
        return python_model.predictor, ref
    folder = Path(ref)
    if folder.is_file():
        raise UserError(f"--model {ref}: a file; give the folder that holds it, {folder.parent}")
    if not folder.is_dir() and len(folder.parts) > 1:  # a path, not a cell's name
        if (models / ref).is_dir():  # ann-adam-relu/seed-1 under --models
            folder = models / ref
        else:
            there = (
                sorted(d.name for d in folder.parent.iterdir() if d.is_dir())
                if folder.parent.is_dir()
                else []
            )
            seeds = io.by_seed(folder.parent / name for name in there)
            if seeds:
                known = f"; {folder.parent} has seeds {', '.join(map(str, seeds))}"
            else:
                known = f"; {folder.parent} holds {', '.join(there)}" if there else ""
            raise UserError(f"--model {ref}: no such folder{known}")
    if not folder.is_dir():
        cell = models / ref
        if not cell.is_dir():
            cells = sorted(d.name for d in models.iterdir() if d.is_dir()) if models.is_dir() else []
            raise UserError(
                f"--model {ref}: no such cell or folder; the trained cells are: "
                f"{', '.join(cells) or f'none ({models} is empty: run make repro)'}"
            )
        seeds = io.by_seed(d for d in cell.iterdir() if d.is_dir())
        if not seeds:
            raise UserError(
                f"--model {ref}: {cell} holds no trained seeds (seed-<n> folders): run make repro"
            )
        if seed is None:
            metas = {s: io.read_json(d / "meta.json") for s, d in seeds.items()}
            # Each seed at its checkpoint, as the registry ranks them (older models: the best epoch).
            chosen = {
                s: (m.get("checkpoint_val_accuracy", m["best_val_accuracy"]), m["diverged"])
                for s, m in metas.items()
            }
            seed = served.in_use_seed(chosen)
            if seed is None:
                raise UserError(f"{cell}: every seed diverged; no model to use")
        if seed not in seeds:
            raise UserError(f"--model {ref} --seed {seed}: the cell has seeds {', '.join(map(str, seeds))}")
        folder = seeds[seed]
    return served.Predictor.load(folder), str(folder)


COMMANDS = {"sync": sync, "predict": predict, "champion": champion}


def main() -> None:
    """`annlab <command> [options]`."""
    usage = f"usage: annlab {{{','.join(COMMANDS)}}} [options]\n\n{__doc__}"
    if len(sys.argv) == 2 and sys.argv[1] in ("-h", "--help"):  # asked for: not an error
        print(usage)
        sys.exit(0)
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(usage, file=sys.stderr)
        sys.exit(2)
    runtime.run(COMMANDS[sys.argv[1]], sys.argv[2:])


if __name__ == "__main__":
    main()
