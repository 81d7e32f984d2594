"""The typed schema of params.yaml and the one function that loads and validates it."""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from annlab.errors import ParamsError

Dataset = Literal["digits", "mnist", "fashion_mnist", "csv", "parquet", "npz", "images"]
BUILTIN_DATASETS = ("digits", "mnist", "fashion_mnist")
TABLE_DATASETS = ("csv", "parquet")
Color = Literal["grayscale", "rgb"]
OWN_DATA_KEYS = ("path", "target", "categorical", "drop", "image_size", "color")
Scaler = Literal["standard", "minmax", "none"]
OptimizerName = Literal["sgd", "adam", "rmsprop"]
Activation = Literal[
    "relu", "tanh", "sigmoid", "elu", "selu", "gelu", "silu", "softplus", "leaky_relu", "linear"
]
Loss = Literal["categorical_crossentropy", "mse"]
ModelType = Literal["ann", "cnn", "rnn", "lstm"]
SelectOn = Literal["val_accuracy", "val_loss"]
Checkpoint = Literal["best", "last"]


# Bounds are generous on purpose: they reject typos and nonsense, not bold experiments
# (a learning rate of 1000 is how one watches plain SGD with ReLU diverge on digits).
LearningRate = Annotated[float, Field(gt=0, le=1000)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
Decay = Annotated[float, Field(ge=0, lt=1)]
Epsilon = Annotated[float, Field(gt=0, le=1)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]
Units = Annotated[list[Annotated[int, Field(ge=1, le=65536)]], Field(min_length=1)]
Dropout = Annotated[float, Field(ge=0, lt=1)]


class _Section(BaseModel):
    # strict: YAML already yields typed values, so "20" for an int is a mistake, not input to coerce.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


ColumnName = Annotated[str, Field(min_length=1)]
ImageSide = Annotated[int, Field(ge=1, le=4096)]


class DataParams(_Section):
    """Which dataset, how it is split and scaled."""

    dataset: Dataset = "digits"
    # The user's own data (csv, parquet, npz: a file; images: a folder of class subfolders). The
    # built-in datasets ignore it; its default is a folder kept in git, since `fetch` lists the
    # path as a DVC dependency and DVC needs one that exists.
    path: Annotated[str, Field(min_length=1)] = "data/own"
    target: ColumnName | None = None  # csv, parquet: the label column
    categorical: list[ColumnName] | None = None  # csv, parquet: None = every non-numeric column
    drop: list[ColumnName] = []  # csv, parquet: columns left out (ids, leaks)
    image_size: Annotated[list[ImageSide], Field(min_length=2, max_length=2)] | None = None
    color: Color = "grayscale"  # images: grayscale (one channel) or rgb (three)
    test_size: Fraction = 0.2
    val_size: Fraction = 0.1
    scaler: Scaler = "standard"
    subset: Annotated[int, Field(ge=20)] | None = None
    # Each training seed draws its own stratified split (split seed = that seed), so intervals
    # over seeds cover the data's sampling too; false: one split from the top-level `seed`.
    split_per_seed: bool = True

    @model_validator(mode="after")
    def _splits_leave_training_data(self) -> DataParams:
        if self.test_size + self.val_size >= 0.9:
            raise ValueError(
                f"test_size + val_size must leave at least 10 % for training "
                f"(got {self.test_size} + {self.val_size})"
            )
        if self.dataset in TABLE_DATASETS and self.target is None:
            raise ValueError(f"data.target: a {self.dataset} dataset needs the name of its label column")
        for key in ("categorical", "drop"):
            values = getattr(self, key) or []
            if self.target is not None and self.target in values:
                raise ValueError(
                    f"data.{key}: lists the target column {self.target!r}, which is the label, not a feature"
                )
            if duplicates := sorted({v for v in values if values.count(v) > 1}):
                raise ValueError(f"data.{key}: lists {', '.join(map(repr, duplicates))} more than once")
        if both := sorted(set(self.categorical or []) & set(self.drop)):
            raise ValueError(f"data.categorical and data.drop both list {', '.join(map(repr, both))}")
        return self

    @property
    def builtin(self) -> bool:
        """Whether the dataset is one annlab fetches itself (digits, MNIST, Fashion-MNIST)."""
        return self.dataset in BUILTIN_DATASETS

    @property
    def label(self) -> str:
        """The data in a few characters, for titles and MLflow: `digits`, or the user's file name
        (`penguins.csv`)."""
        return self.dataset if self.builtin else Path(self.path).name or self.path


class AnnParams(_Section):
    """What only the fully connected ANN has (its layers are `model.hidden_units`)."""

    dropout: Dropout = 0.0


class CnnParams(_Section):
    """The convolution blocks a CNN puts before its dense layers."""

    # One block per entry: Conv2D(filters, kernel_size), then MaxPooling2D(pool_size), both with
    # "same" padding (a pooled side is rounded up, so no row is lost and none pools to nothing).
    filters: Units = [64, 128]
    kernel_size: Annotated[int, Field(ge=1, le=28)] = 3
    pool_size: Annotated[int, Field(ge=1, le=28)] = 2
    dropout: Dropout = 0.0


class RecurrentParams(_Section):
    """The recurrent layers of an RNN or LSTM (image rows are its time steps)."""

    units: Units = [128]  # one layer per entry, stacked
    dropout: Dropout = 0.0


class ModelParams(_Section):
    """The network: its architecture and the hyperparameters of each one."""

    type: ModelType = "ann"  # for a single run; the grid sets it per cell
    # The hidden dense layers: the whole ANN, and the head after a CNN's or RNN's own layers.
    hidden_units: Units = [64, 32]
    activation: Activation = "relu"
    ann: AnnParams = AnnParams()
    cnn: CnnParams = CnnParams()
    rnn: RecurrentParams = RecurrentParams()
    lstm: RecurrentParams = RecurrentParams()

    @property
    def label(self) -> str:
        """The network in a few characters, e.g. `ann 64-32`, `cnn 64-128 / 64-32`, for names,
        titles and headers: the architecture's own layers, then the dense ones."""
        dense = "-".join(map(str, self.hidden_units))
        own = {"ann": None, "cnn": self.cnn.filters, "rnn": self.rnn.units, "lstm": self.lstm.units}
        layers = own[self.type]
        if layers is None:
            return f"{self.type} {dense}"
        return f"{self.type} {'-'.join(map(str, layers))} / {dense}"

    @property
    def dropout(self) -> float:
        """The dropout rate of this architecture's hidden dense layers."""
        section: AnnParams | CnnParams | RecurrentParams = getattr(self, self.type)
        return section.dropout


class TrainParams(_Section):
    """How a single run trains; the grid overrides `optimizer` per cell."""

    optimizer: OptimizerName = "adam"
    epochs: Annotated[int, Field(ge=1, le=10000)] = 20
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 32
    loss: Loss = "categorical_crossentropy"
    # Which weights a run is evaluated (and served) with: those of the epoch with the best
    # validation metric (`tuning.select_on`), or the final epoch's.
    checkpoint: Checkpoint = "last"


class SGDParams(_Section):
    """Hyperparameters of keras.optimizers.SGD."""

    learning_rate: LearningRate = 0.01
    momentum: Decay = 0.0
    nesterov: bool = False


class AdamParams(_Section):
    """Hyperparameters of keras.optimizers.Adam."""

    learning_rate: LearningRate = 0.001
    beta_1: Decay = 0.9
    beta_2: Decay = 0.999
    epsilon: Epsilon = 1e-7


class RMSpropParams(_Section):
    """Hyperparameters of keras.optimizers.RMSprop."""

    learning_rate: LearningRate = 0.001
    rho: Decay = 0.9
    momentum: Decay = 0.0
    epsilon: Epsilon = 1e-7


class OptimizersParams(_Section):
    """Per-optimizer hyperparameters, `optimizers.<name>.*`."""

    sgd: SGDParams = SGDParams()
    adam: AdamParams = AdamParams()
    rmsprop: RMSpropParams = RMSpropParams()


class GridParams(_Section):
    """The architecture x optimizer x activation grid: each combination is one DVC matrix cell,
    trained once per seed."""

    model: Annotated[list[ModelType], Field(min_length=1)] = ["ann"]
    optimizer: Annotated[list[OptimizerName], Field(min_length=1)] = ["sgd", "adam", "rmsprop"]
    activation: Annotated[list[Activation], Field(min_length=1)] = ["relu", "tanh", "sigmoid"]
    # Training seeds (weights, shuffling and, with data.split_per_seed, the split); None: the
    # one top-level `seed`.
    # (params.yaml, which must name every key, ships [1, 2, 3, 4, 5].)
    seeds: Annotated[list[Seed], Field(min_length=1, max_length=100)] | None = None

    @field_validator("model", "optimizer", "activation", "seeds")
    @classmethod
    def _no_duplicates(cls, values: list[Any] | None) -> list[Any] | None:
        # Each value names a DVC stage (train@<model>-<optimizer>-<activation>) or a run; twice would clash.
        duplicates = sorted({str(v) for v in values or [] if values.count(v) > 1})
        if duplicates:
            raise ValueError(f"lists {', '.join(duplicates)} more than once; values must be unique")
        return values


TrialRates = Annotated[list[LearningRate], Field(min_length=1, max_length=50)]


class TuningParams(_Section):
    """Each optimizer's learning rate, tuned with the same budget: every value of its list is
    trained on the tuning seed, the best on validation is then trained on every seed."""

    # Per optimizer, the values tried; an optimizer left out, or null, trains once at
    # `optimizers.<name>.learning_rate` (one-shot).
    learning_rates: dict[OptimizerName, TrialRates | None] = {}
    select_on: SelectOn = "val_accuracy"
    seed: Seed | None = None  # None: the first of grid.seeds

    @field_validator("learning_rates")
    @classmethod
    def _each_value_once(cls, rates: dict[str, list[float] | None]) -> dict[str, list[float] | None]:
        for name, values in rates.items():
            if duplicates := sorted({v for v in values or [] if values.count(v) > 1}):
                listed = ", ".join(map(repr, duplicates))
                raise ValueError(f"{name}: lists {listed} more than once; each value is tried once")
        return rates


class Tuning(NamedTuple):
    """How one optimizer's cells choose their learning rate (`Params.tuning_for`)."""

    learning_rates: list[float]
    select_on: str
    seed: int


class MlflowParams(_Section):
    """Where runs are filed in MLflow (the store itself comes from the environment)."""

    experiment: Annotated[str, Field(min_length=1, max_length=200)] = "annlab"
    # The report stage registers each new grid's best model under this name; the alias
    # `champion` marks the one in use (docs/mlflow.md, "The model registry"). None: one name per
    # dataset, `annlab-<dataset>` (`Params.registered_model`).
    registered_model: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^/:@]+$")] | None = None


def default_model_name(label: str) -> str:
    """`annlab-<dataset>` for a dataset's label (a file's name without its suffix), in the
    characters MLflow's registry and URIs take."""
    stem = Path(label).stem if Path(label).suffix else Path(label).name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "data"
    return f"annlab-{cleaned}"[:200]


def cell_name(model: str, optimizer: str, activation: str) -> str:
    """A grid cell's name: its DVC stage is `train@<name>`, its MLflow run `<name>`."""
    return f"{model}-{optimizer}-{activation}"


# The params a grid cell's training reads, beside `data`, which reaches it through
# data/processed: the `train` stage's `params:` in dvc.yaml, where {model} and {optimizer} are
# the matrix item's. A cell depends on nothing else, so nothing else reruns it.
CELL_PARAMS = (
    "seed",
    "grid.seeds",
    "model.hidden_units",
    "model.{model}",
    "train.epochs",
    "train.batch_size",
    "train.loss",
    "train.checkpoint",
    "optimizers.{optimizer}",
)


def cell_keys(model: str, optimizer: str) -> list[str]:
    """The params keys a grid cell depends on besides `data` (`CELL_PARAMS` for its architecture
    and optimizer)."""
    return [key.format(model=model, optimizer=optimizer) for key in CELL_PARAMS]


class Cell(NamedTuple):
    """One cell of the grid: DVC stage `train@<name>`, MLflow run `<name>`."""

    name: str
    model: str
    optimizer: str
    activation: str


class Params(_Section):
    """Everything params.yaml may hold."""

    seed: Seed = 42
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    optimizers: OptimizersParams = OptimizersParams()
    grid: GridParams = GridParams()
    # None: every optimizer trains once at its own learning rate (one-shot, no tuning).
    tuning: TuningParams | None = None
    mlflow: MlflowParams = MlflowParams()

    @model_validator(mode="after")
    def _tuning_seed_is_trained(self) -> Params:
        seed = self.tuning.seed if self.tuning else None
        if seed is not None and seed not in self.seeds:
            raise ValueError(
                f"tuning.seed: {seed} is not one of the training seeds ({', '.join(map(str, self.seeds))}):"
                " the tuning seed's run at the chosen learning rate is that seed's run; pick one of"
                " grid.seeds, or null for the first"
            )
        return self

    @model_validator(mode="after")
    def _tables_train_the_ann(self) -> Params:
        if self.data.dataset in TABLE_DATASETS and (others := [m for m in self.grid.model if m != "ann"]):
            raise ValueError(
                f"grid.model: {', '.join(others)} cannot train on a table (data.dataset: "
                f"{self.data.dataset}): a CNN needs images, an RNN or LSTM sequences; use [ann]"
            )
        return self

    def for_cell(self, model: str, optimizer: str, activation: str) -> Params:
        """The params of one grid cell: the grid's architecture, optimizer and activation replace
        the single-run defaults."""
        return self.model_validate(
            {
                **self.model_dump(),
                "train": {**self.train.model_dump(), "optimizer": optimizer},
                "model": {**self.model.model_dump(), "type": model, "activation": activation},
            }
        )

    def tuning_for(self, optimizer: str) -> Tuning | None:
        """How the cells of `optimizer` choose their learning rate; None when they train once
        at `optimizers.<optimizer>.learning_rate` (no list for it, or `tuning: null`)."""
        rates = self.tuning.learning_rates.get(optimizer) if self.tuning else None  # type: ignore[call-overload]
        if not rates or self.tuning is None:
            return None
        seed = self.tuning.seed if self.tuning.seed is not None else self.seeds[0]
        return Tuning(list(rates), self.tuning.select_on, seed)

    @property
    def select_on(self) -> str:
        """The validation metric that picks learning rates and best checkpoints."""
        return self.tuning.select_on if self.tuning else "val_accuracy"

    @property
    def registered_model(self) -> str:
        """The registered model the grid's best goes to: `mlflow.registered_model`, or by default
        one per dataset, `annlab-<dataset>` (`annlab-digits`, `annlab-penguins` for penguins.csv),
        so that a grid on other data never displaces another dataset's model in use."""
        if self.mlflow.registered_model:
            return self.mlflow.registered_model
        return default_model_name(self.data.label)

    def resolved_tuning(self) -> dict[str, dict[str, Any] | None]:
        """Each optimizer's `tuning_for`, as the `validate` stage writes it for DVC: a cell's
        stage tracks its own optimizer's entry, so changing one list retrains only its cells,
        and adding seeds after the tuning seed leaves the entry as it was."""
        resolved: dict[str, dict[str, Any] | None] = {}
        for name in get_args(OptimizerName):
            tuning = self.tuning_for(name)
            if tuning:
                resolved[name] = tuning._asdict()
            elif self.train.checkpoint == "best":  # an untuned cell's checkpoint is picked on it too
                resolved[name] = {"learning_rates": None, "select_on": self.select_on, "seed": None}
            else:
                resolved[name] = None
        return resolved

    def with_learning_rate(self, optimizer: str, learning_rate: float) -> Params:
        """These params with `optimizers.<optimizer>.learning_rate` set to `learning_rate`."""
        section = getattr(self.optimizers, optimizer).model_copy(update={"learning_rate": learning_rate})
        return self.model_copy(update={"optimizers": self.optimizers.model_copy(update={optimizer: section})})

    def cells(self) -> list[Cell]:
        """The grid's cells in params order (architecture, then optimizer, then activation), the
        order in which DVC expands the `train` matrix."""
        return [
            Cell(cell_name(m, o, a), m, o, a)
            for m in self.grid.model
            for o in self.grid.optimizer
            for a in self.grid.activation
        ]

    def architectures(self) -> dict[str, str]:
        """Each architecture of the grid and its label (e.g. `cnn` -> `cnn 64-128 / 64-32`)."""
        return {m: self.model.model_copy(update={"type": m}).label for m in self.grid.model}

    def models_label(self) -> str:
        """The grid's networks in a few characters: `ann 64-32` for one, `ann+cnn+lstm` for several."""
        labels = self.architectures()
        return next(iter(labels.values())) if len(labels) == 1 else "+".join(labels)

    @property
    def seeds(self) -> list[int]:
        """The training seeds of every cell: `grid.seeds`, else the one top-level `seed`."""
        return list(self.grid.seeds) if self.grid.seeds else [self.seed]

    def grid_id(self) -> str:
        """A short id, equal exactly when two grids train the same cells on the same setup.

        It hashes the grid lists and seeds (which cells exist), the data, and what each cell
        depends on (`cell_keys`). Left out: the MLflow settings, the single-run defaults that
        every cell overrides, and the hyperparameters of optimizers and architectures the grid
        does not use.
        """
        keys = ["grid", "data", *(k for c in self.cells() for k in cell_keys(c.model, c.optimizer))]
        tree = self.select(keys)
        resolved = self.resolved_tuning()
        if tuned := {o: resolved[o] for o in self.grid.optimizer if resolved[o]}:
            tree["tuning"] = tuned
        blob = json.dumps(tree, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def select(self, keys: list[str]) -> dict[str, Any]:
        """The params tree cut down to `keys` (dotted; each names its whole subtree); with a
        built-in dataset the keys of the user's own data are left out, since they do not apply."""
        tree = self.model_dump()
        if self.data.builtin:
            tree["data"] = {k: v for k, v in tree["data"].items() if k not in OWN_DATA_KEYS}
        picked: dict[str, Any] = {}
        for key in keys:
            *path, last = key.split(".")
            source, target = tree, picked
            for part in path:
                source, target = source[part], target.setdefault(part, {})
            target[last] = source[last]
        return picked

    def flat(self) -> dict[str, Any]:
        """The params as one flat dict with dotted keys, as MLflow logs them."""
        return flatten(self.model_dump())


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested params tree as one flat dict with dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The schema section that owns the key at `loc`, to list its allowed keys."""
    model: type[BaseModel] = Params
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(p for p in error["loc"] if p != "[key]")  # a mapping's key is named as the key
    key = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        owner = _model_at(loc)
        allowed = sorted(owner.model_fields) if owner else []
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
        return f"{key}: unknown key{suggestion} (allowed: {', '.join(allowed)})"
    message = error["msg"].removeprefix("Value error, ")
    if not loc:  # a check across sections: its message names the keys
        return message
    if isinstance(error["input"], dict):  # a whole section: the message says what is wrong
        return f"{key}: {message}"
    return f"{key}: {message} (got {error['input']!r})"


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already-parsed params mapping; raise ParamsError naming every bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: the top level must be a mapping of keys, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors(include_url=False)]
        raise ParamsError(f"{source} is invalid:\n" + "\n".join(f"  {line}" for line in lines)) from None


class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading floats as YAML 1.2 (and DVC) do: `1e-3` is a number."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _missing_keys(raw: dict[str, Any]) -> list[str]:
    """Keys of the schema that the file leaves out (DVC fails on a tracked key that is absent)."""
    present = set(flatten(raw))
    return [
        f"{key}: missing; DVC tracks it, so write it out (default: {json.dumps(default)})"
        for key, default in Params().flat().items()
        if key not in present and not any(key.startswith(p + ".") or p.startswith(key + ".") for p in present)
    ]


def load_params(path: str | Path = "params.yaml", *, complete: bool = False) -> Params:
    """Read params.yaml with a safe loader and validate it.

    `complete`: also require every key of the schema to be written out, as DVC needs for the
    keys its stages track (the `validate` stage checks this for the pipeline).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read the params file ({exc.strerror})") from None
    try:
        raw = yaml.load(text, Loader=_SafeLoader)  # safe: a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    params = parse_params(raw, str(path))
    missing = _missing_keys(raw or {}) if complete else []
    if missing:
        raise ParamsError(f"{path} is invalid:\n" + "\n".join(f"  {line}" for line in missing))
    return params
