"""One strict, typed loader for ``params.yaml``, on pydantic.

Every section is a frozen pydantic model: strict types (no ``"256"`` for 256, no ``true`` for 1, no
``.inf``), ranges, literal choices and no unknown keys; :meth:`Params.check` adds the checks that
span sections. Every problem stops the caller with a :class:`ParamsError` whose message is one line
naming the key and what is allowed, before any stage does any work. :class:`HyperParams` is the one
description of the hyper-parameters that search tries and train uses.

The one-line wording lives in :mod:`fmnist.params_errors`, the JSON Schema that editors use to
complete and check ``params.yaml`` in :mod:`fmnist.params_schema`, and the command that checks a
params file (``fmnist-params``) in :mod:`fmnist.params_cli`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic_core import PydanticCustomError

from fmnist.errors import ParamsError
from fmnist.params_errors import Allowed, describe, one_line, show

# The trunk's three 3x3/2 max-pools need at least 67 px (``fmnist.model.min_input_size``, checked
# by a test); kept here so that loading params does not import the model code.
MIN_INPUT_SIZE = 67
FMNIST_TRAIN_IMAGES = 60_000  # the training set that split divides into train and validation


# The hyper-parameters, shared by the grid, the train section and HyperParams.
LearningRate = Annotated[float, pydantic.Strict(), Field(gt=0, le=1.0)]
BatchSize = Annotated[int, pydantic.Strict(), Field(ge=1, le=65_536)]
Dropout = Annotated[float, pydantic.Strict(), Field(ge=0.0, le=0.95)]
Seed = Annotated[int, pydantic.Strict(), Field(ge=0)]

# host:port or tcp://host:port, the host a name, an IPv4 address or a bracketed IPv6 address.
_PORT = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_HOST = r"([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
DASK_ADDRESS = rf"^$|^(tcp://)?{_HOST}:{_PORT}$"


class Section(BaseModel):
    """A params section: frozen once loaded, no unknown keys, no inf or nan in a number."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DownloadParams(Section):
    """Stage download: where the four Fashion-MNIST files come from."""

    sources: tuple[Annotated[StrictStr, Field(min_length=1)], ...] = Field(
        min_length=1, description="Tried in order: local folders (holding the .gz or the decompressed IDX "
                                  "files) and URLs.")
    timeout_s: StrictFloat = Field(30.0, gt=0, le=3600, description="Seconds to wait for a URL.")


class SplitParams(Section):
    """Stage split: the stratified train/validation split of the 60k training images."""

    valid_size: StrictInt = Field(ge=10, le=59_000, description="Images of the 60k training set held out "
                                                                "for validation.")
    seed: Seed = Field(description="Seeds the stratified split and the train_size subset.")
    train_size: StrictInt = Field(0, ge=0, le=59_990, description="Training images kept of the rest: "
                                                                  "0 = all, else a stratified subset.")


class ResizeParams(Section):
    """Stage resize: the square input size of the model."""

    size: StrictInt = Field(ge=28, le=512, description="Image side in pixels: 67 for AlexNetSmall, 227 "
                                                       "for AlexNet.")
    chunk: StrictInt = Field(4096, ge=1, description="Images resized per tensor operation.")


class ModelParams(Section):
    """The network, and the precision it computes in (search, train and prediction)."""

    name: Literal["AlexNetSmall", "AlexNet"] = Field(description="AlexNetSmall (67 px) or AlexNet (227 px).")
    head: Literal["linear", "notebook"] = Field(
        description='"linear": a plain linear output layer (right). "notebook": ReLU + dropout on the '
                    "logits, as the notebook this project started from did; kept only to measure how "
                    "much it costs.")
    lrn: StrictBool = Field(description="The paper's local response normalisation after conv1 and conv2.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        description='Compute precision of search, train and every prediction: "bf16" (mixed precision, '
                    'fp32 weights), "fp32", or "auto": bf16 where the CPU (AMX, AVX512-BF16) or GPU does '
                    "it natively.")
    # auto = the planned fast convolution implementations (fmnist.conv); pytorch = every layer on
    # F.conv2d / nn.MaxPool2d, to rule the fast paths out.
    conv: Literal["auto", "pytorch"] = Field(
        "auto", description='How convolutions and max-pools are computed: "auto", by the implementation '
                            "the rules table of fmnist.conv plans for each layer; \"pytorch\", every layer by "
                            "F.conv2d and nn.MaxPool2d. Both compute the same model.")


@pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(allow_inf_nan=False))
class HyperParams:
    """The hyper-parameters search tries and train uses: one trial's, the best, or the train section's.

    ``dataclasses.fields(HyperParams)`` (or :meth:`names`) gives the keys of the grid, the trial
    rows and ``best_params.json``. Constructing one checks types and ranges (a pydantic
    ``ValidationError``); :meth:`from_dict` turns that into a one-line :class:`ParamsError`.
    """

    lr: LearningRate
    batch_size: BatchSize
    dropout: Dropout

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "hyper-parameters") -> HyperParams:
        """Checked hyper-parameters from a mapping such as ``best_params.json``'s; keys other than
        the hyper-parameters' (``valid_acc``...) are ignored. Errors name ``source`` and the key."""
        if not isinstance(data, Mapping):
            raise ParamsError(f"{source}: must be {describe(cls, [])}, got {show(data)}")
        try:
            return _HYPER_PARAMS.validate_python({k: data[k] for k in cls.names() if k in data})
        except pydantic.ValidationError as err:
            raise one_line(err, cls, source) from None

    def label(self) -> str:
        """The trial's text in progress lines and plots: ``lr=0.001 batch_size=256 dropout=0.5``."""
        return f"lr={self.lr:g} batch_size={self.batch_size} dropout={self.dropout:g}"


_HYPER_PARAMS = pydantic.TypeAdapter(HyperParams)


class GridParams(Section):
    """The values search tries: every combination of them."""

    lr: tuple[LearningRate, ...] = Field(min_length=1, description="Learning rates to try.")
    batch_size: tuple[BatchSize, ...] = Field(min_length=1, description="Batch sizes to try.")
    dropout: tuple[Dropout, ...] = Field(min_length=1, description="Dropout rates to try.")

    def combinations(self) -> list[HyperParams]:
        """Every combination, in ``sklearn.model_selection.ParameterGrid`` order: keys sorted
        (batch_size, dropout, lr), the last one varying fastest."""
        return [HyperParams(lr=lr, batch_size=batch_size, dropout=dropout)
                for batch_size, dropout, lr in itertools.product(self.batch_size, self.dropout, self.lr)]


LR_RANGE = "[low, high] with 0 < low < high <= 1"
DROPOUT_RANGE = "[low, high] with 0 <= low < high <= 0.95"


class OptunaParams(Section):
    """search.strategy optuna: the space as ranges, the sampler, the pruner and the budget."""

    lr: Annotated[tuple[LearningRate, LearningRate], Allowed(LR_RANGE)] = Field(
        (1e-4, 1e-2), description="Learning rates [low, high], sampled log-uniform.")
    dropout: Annotated[tuple[Dropout, Dropout], Allowed(DROPOUT_RANGE)] = Field(
        (0.0, 0.6), description="Dropout rates [low, high], sampled uniform.")
    batch_size: tuple[BatchSize, ...] = Field((64, 128, 256), min_length=1,
                                              description="Batch sizes to choose from (categorical).")
    sampler: Literal["tpe", "random"] = Field("tpe", description="tpe: Optuna's TPE, seeded from search.seed "
                                                                 "and the trial's number; random: uniform.")
    startup_trials: StrictInt = Field(5, ge=0, le=1000, description="tpe: random trials before TPE models "
                                                                    "the finished ones.")
    pruner: Literal["hyperband", "halving", "none"] = Field(
        "hyperband", description="Stops poor trials from their per-epoch valid_acc: Hyperband, successive "
                                 "halving (reduction factor search.factor) or none.")
    min_epochs: StrictInt = Field(1, ge=1, le=1000, description="Epochs a trial trains before it can be "
                                                                "pruned.")
    budget: StrictInt = Field(0, ge=0, description="Training images processed by all trials together "
                                                   "(trials.json's images_processed); 0 = the grid's.")

    @pydantic.field_validator("lr", "dropout")
    @classmethod
    def _low_below_high(cls, bounds: tuple[float, float], info: pydantic.ValidationInfo) -> tuple[float, float]:
        if bounds[0] >= bounds[1]:
            allowed = LR_RANGE if info.field_name == "lr" else DROPOUT_RANGE
            raise PydanticCustomError("params_allowed", "low >= high", {"allowed": allowed})
        return bounds


class SearchParams(Section):
    """Stage search: the hyper-parameter search and where its trials run."""

    strategy: Literal["grid", "halving", "optuna"] = Field(
        description="grid: every combination; halving: successive halving; optuna: ranges, TPE and "
                    "pruning (search.optuna).")
    grid: GridParams
    epochs: StrictInt = Field(ge=1, le=1000, description="Epochs per trial (halving: in the last round).")
    subset: StrictInt = Field(ge=0, description="Training images per trial, 0 = the whole split.")
    seed: Seed = Field(description="Seeds every trial (the same seed for each), the subsets and the folds.")
    factor: StrictInt = Field(3, ge=2, le=10, description="halving: keep the best 1/factor each round, "
                                                          "give them factor times more.")
    resource: Literal["samples", "epochs"] = Field(
        "samples", description="halving: what each round gives factor times more of. samples: a trial "
                               "trains afresh on a stratified subset; epochs: a trial goes on from where "
                               "it was in the round before.")
    cv: StrictInt = Field(0, ge=0, le=20, json_schema_extra={"not": {"const": 1}},
                          description="0 = score on the validation split, k >= 2 = stratified k-fold.")
    n_jobs: StrictInt = Field(1, ge=0, le=256, description="Trials at once on this machine, 0 = one per core.")
    threads: StrictInt = Field(0, ge=0, le=1024, description="Torch threads per trial, 0 = cores // n_jobs.")
    scheduler: Annotated[StrictStr, Allowed('"" (this machine) or a Dask scheduler address: tcp://host:port '
                                            "or host:port")] = Field(
        "", pattern=DASK_ADDRESS, description='A Dask scheduler address (tcp://host:8786) to run trials on, '
                                              '"" = this machine.')
    optuna: OptunaParams = Field(default_factory=OptunaParams, description="strategy optuna: the space, "
                                                                           "sampler, pruner and budget.")

    @pydantic.field_validator("cv")
    @classmethod
    def _cv_is_not_one(cls, cv: int) -> int:
        if cv == 1:
            raise PydanticCustomError("params_allowed", "cv=1",
                                      {"allowed": "0 (the validation split) or 2 to 20 folds"})
        return cv

    @pydantic.model_validator(mode="after")
    def _optuna_fits(self) -> SearchParams:
        if self.strategy != "optuna":
            return self
        problem = ""
        if self.cv:  # the pruner reads one validation curve per epoch; k folds train one after the other
            problem = f"search.cv={self.cv} is not allowed with search.strategy=optuna; allowed: 0"
        elif self.optuna.min_epochs > self.epochs:
            problem = (f"search.optuna.min_epochs={self.optuna.min_epochs} is more than search.epochs="
                       f"{self.epochs}; allowed: 1..{self.epochs}")
        elif self.subset and max(self.optuna.batch_size) > self.subset:
            problem = (f"search.optuna.batch_size={max(self.optuna.batch_size)} is larger than the "
                       f"{self.subset} training images of a trial (search.subset); allowed: 1..{self.subset}")
        if problem:
            raise PydanticCustomError("params_check", "{message}", {"message": f"params.yaml: {problem}"})
        return self


class TrainParams(Section):
    """Stage train: the final model, on the best or these hyper-parameters."""

    use_search: StrictBool = Field(description="Take lr, batch_size and dropout from search's best params.")
    lr: LearningRate = Field(description="Used when use_search is false.")
    batch_size: BatchSize = Field(description="Used when use_search is false.")
    dropout: Dropout = Field(description="Used when use_search is false.")
    max_epochs: StrictInt = Field(ge=1, le=1000, description="Epochs at most (early stopping may end sooner).")
    patience: StrictInt = Field(ge=1, le=1000, description="Early stopping on valid_acc.")
    augment: StrictBool = Field(description="The paper's random crop + horizontal flip.")
    seed: Seed = Field(description="Seeds random, NumPy and torch at the start of the stage.")
    threads: StrictInt = Field(0, ge=0, le=1024, description="Torch threads, 0 = one per core.")
    progress_bar: StrictBool = Field(True, description="Show skorch's progress bar over each epoch's batches.")

    def hyper_params(self) -> HyperParams:
        """This section's lr, batch_size and dropout (the ones train uses when use_search is false)."""
        return HyperParams(lr=self.lr, batch_size=self.batch_size, dropout=self.dropout)


class EvaluateParams(Section):
    """Stage evaluate: the test-set metrics and plots."""

    batch_size: StrictInt = Field(ge=1, le=65_536, description="Images per prediction batch.")
    n_misclassified: StrictInt = Field(ge=0, le=400, description="Most confident mistakes shown.")


class TrackingParams(Section):
    """MLflow: where every stage logs its runs and registers the model."""

    experiment: Annotated[StrictStr, Allowed("a non-empty string")] = Field(
        pattern=r"\S", description="MLflow experiment of every stage's runs.")
    registered_model: StrictStr = Field(description='Registered model name, "" = log the model without '
                                                    "registering it.")


class Params(Section):
    """The pipeline's params, one section per stage (checked by src/fmnist/params.py)."""

    model_config = ConfigDict(title="params.yaml")

    download: DownloadParams
    split: SplitParams
    resize: ResizeParams
    model: ModelParams
    search: SearchParams
    train: TrainParams
    evaluate: EvaluateParams
    tracking: TrackingParams

    def check(self) -> None:
        """Checks that span sections; raises :class:`ParamsError`."""
        smallest = MIN_INPUT_SIZE
        if self.resize.size < smallest:
            raise ParamsError(
                f"params.yaml: resize.size={self.resize.size} is too small for model.name="
                f"{self.model.name}; allowed: {smallest} or more"
            )
        left = FMNIST_TRAIN_IMAGES - self.split.valid_size
        n_train = self.split.train_size or left
        if self.split.train_size > left:
            raise ParamsError(f"params.yaml: split.train_size={self.split.train_size} is more than the "
                              f"{left} images left after validation; allowed: 0 (all) up to that")
        if self.search.subset > n_train:
            raise ParamsError(f"params.yaml: search.subset={self.search.subset} is larger than the training "
                              f"split ({n_train} images); allowed: 0 (all) up to {n_train}")
        for key, size in (("train.batch_size", self.train.batch_size),
                          *(("search.grid.batch_size", b) for b in self.search.grid.batch_size)):
            if size > n_train:
                raise ParamsError(f"params.yaml: {key}={size} is larger than the {n_train} training images; "
                                  f"allowed: 1..{n_train}")
        trial = self.search.subset or n_train
        for size in self.search.grid.batch_size:
            if size > trial:
                raise ParamsError(f"params.yaml: search.grid.batch_size={size} is larger than the {trial} "
                                  f"training images of a trial (search.subset); allowed: 1..{trial}")

    @pydantic.model_validator(mode="after")
    def _check(self) -> Params:
        try:
            self.check()
        except ParamsError as err:
            raise PydanticCustomError("params_check", "{message}", {"message": str(err)}) from None
        return self


def parse_params(raw: Any) -> Params:
    """Validate an already-parsed params mapping."""
    try:
        return Params.model_validate(raw)
    except pydantic.ValidationError as err:
        raise one_line(err, Params, "params.yaml", top="section") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; every problem is a one-line :class:`ParamsError`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run the stage from the project root") from None
    except OSError as err:
        raise ParamsError(f"{path}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None
    if raw is None:
        raise ParamsError(f"{path}: empty; expected the sections {', '.join(Params.model_fields)}")
    return parse_params(raw)


def to_dict(obj: Any) -> dict:
    """A plain, YAML/JSON-friendly dict of a params section or HyperParams (tuples become lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(obj.model_dump() if isinstance(obj, BaseModel) else dataclasses.asdict(obj))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out
