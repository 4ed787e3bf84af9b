"""One strict, typed loader for ``params.yaml``, on pydantic.

Every section is a frozen pydantic model: strict types (no ``"256"`` for 256, no ``true`` for 1, no
``.inf``), ranges, literal choices and no unknown keys; :meth:`Params.check` adds the checks that
span sections. Every problem stops the caller with a :class:`ParamsError` whose message is one line
naming the key and what is allowed, before any stage does any work. :class:`HyperParams` is the one
description of the hyper-parameters that search tries and train uses.

The JSON Schema that editors use to complete and check ``params.yaml`` is generated from these
models and checked in (a test keeps it current)::

    python -m fmnist.params --schema > params.schema.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic_core import PydanticCustomError

from fmnist.errors import ParamsError

# The trunk's three 3x3/2 max-pools need at least 67 px (``fmnist.model.min_input_size``, checked
# by a test); kept here so that loading params does not import the model code.
MIN_INPUT_SIZE = 67
FMNIST_TRAIN_IMAGES = 60_000  # the training set that split divides into train and validation

SCHEMA_FILE = "params.schema.json"


class Allowed:
    """The "allowed: ..." text of a field whose type and bounds do not say it on their own."""

    def __init__(self, text: str):
        self.text = text


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
            raise ParamsError(f"{source}: must be {_describe(cls, [])}, got {_show(data)}")
        try:
            return _HYPER_PARAMS.validate_python({k: data[k] for k in cls.names() if k in data})
        except pydantic.ValidationError as err:
            raise _one_line(err, cls, source) from None

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


class SearchParams(Section):
    """Stage search: the hyper-parameter search and where its trials run."""

    strategy: Literal["grid", "halving"] = Field(description="grid: every combination; halving: "
                                                             "successive halving.")
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

    @pydantic.field_validator("cv")
    @classmethod
    def _cv_is_not_one(cls, cv: int) -> int:
        if cv == 1:
            raise PydanticCustomError("params_allowed", "cv=1",
                                      {"allowed": "0 (the validation split) or 2 to 20 folds"})
        return cv


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


# -- one-line errors --------------------------------------------------------------------------------

def _fields(cls: type) -> dict[str, Any]:
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return cls.model_fields
    return getattr(cls, "__pydantic_fields__", {})


def _is_model(tp: Any) -> bool:
    return bool(_fields(tp)) if isinstance(tp, type) else False


def _split(tp: Any) -> tuple[Any, list]:
    """``Annotated[T, *meta]`` -> ``(T, meta)``, also through pydantic ``Field`` metadata."""
    meta: list = []
    while typing.get_origin(tp) is Annotated:
        meta += list(tp.__metadata__)
        tp = tp.__origin__
    flat = []
    for m in meta:
        flat += m.metadata if isinstance(m, pydantic.fields.FieldInfo) else [m]
    return tp, flat


def _bounds(meta: list) -> str:
    parts = []
    for m in meta:
        if isinstance(m, annotated_types.Gt):
            parts.append(f"> {m.gt}")
        elif isinstance(m, annotated_types.Ge):
            parts.append(f">= {m.ge}")
    for m in meta:
        if isinstance(m, annotated_types.Lt):
            parts.append(f"< {m.lt}")
        elif isinstance(m, annotated_types.Le):
            parts.append(f"<= {m.le}")
    return " and ".join(parts)


_NAMES = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
          str: ("a string", "strings")}


def _describe(tp: Any, meta: list, plural: bool = False) -> str:
    """What a value of this type and metadata may be: ``a number > 0 and <= 1.0``."""
    tp, more = _split(tp)
    meta = meta + more
    for m in meta:
        if isinstance(m, Allowed):
            return m.text
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        inner, inner_meta = _split(typing.get_args(tp)[0])
        return "a non-empty list of " + _describe(inner, inner_meta, plural=True)
    if _is_model(tp):
        return "a mapping with keys " + ", ".join(_fields(tp))
    text = _NAMES[tp][plural]
    if tp is str and any(isinstance(m, annotated_types.MinLen) and m.min_length > 0 for m in meta):
        return "non-empty strings" if plural else "a non-empty string"
    bounds = _bounds(meta)
    return f"{text} {bounds}" if bounds else text


def _show(value: Any) -> str:
    """A value as the user wrote it: YAML's null/true/.inf, Python's repr otherwise ('256', [1, 2])."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


def _walk(root: type, loc: tuple) -> tuple[list, Any, Any, Any]:
    """Follow ``loc`` from ``root``: (sort rank, the model holding the last key, that key's field
    info or None, the type at ``loc``)."""
    rank: list = []
    tp: Any = root
    owner, info = None, None
    for part in loc:
        if not _is_model(tp):  # a list: part is an index
            rank.append(part if isinstance(part, int) else 0)
            tp = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else None
            tp = _split(tp)[0]
            continue
        fields = _fields(tp)
        owner, info = tp, fields.get(part) if isinstance(part, str) else None
        # Unknown keys first, as a reader fixes a typo before anything else; then fields in order.
        rank.append(list(fields).index(part) if info is not None else -1)
        tp = _split(info.annotation)[0] if info is not None else None
    return rank, owner, info, tp


UNKNOWN = ("extra_forbidden", "invalid_key")  # a key not in the model, or one that is not even a string


def _one_line(err: pydantic.ValidationError, root: type, source: str) -> ParamsError:
    """The first of pydantic's errors, in the file's order, as the one line the tests pin."""
    errors = sorted(err.errors(), key=lambda e: _walk(root, e["loc"])[0])
    e = errors[0]
    loc = e["loc"]
    kind = e["type"]
    # An unknown key may be anything YAML reads as a key (1, true): it is a name here, not an index.
    key = _key(loc[:-1]) + ("." if len(loc) > 1 else "") + str(loc[-1]) if kind in UNKNOWN else _key(loc)
    _, _, info, here = _walk(root, loc)
    if kind == "params_check":
        return ParamsError(e["ctx"]["message"])
    if kind in UNKNOWN:
        what = "section" if len(loc) == 1 and root is Params else "key"
        holder = _walk(root, loc[:-1])[3]
        return ParamsError(f"{source}: unknown {what} {key!r}; allowed: {', '.join(_fields(holder))}")
    if kind == "missing":
        return ParamsError(f"{source}: missing key {key!r}; expected {_describe(info.annotation, info.metadata)}")
    if kind in ("model_type", "model_attributes_type", "dataclass_type"):
        where = key or "the top level"
        return ParamsError(f"{source}: {where} must be {_describe(here, [])}, got {_show(e['input'])}")
    if info is None:  # not a shape this file has: pydantic's own words, still one line
        return ParamsError(f"{source}: {key or 'the top level'}: {e['msg']}")
    if kind == "params_allowed":
        allowed = e["ctx"]["allowed"]
    elif isinstance(loc[-1], int):  # an element of a list
        allowed = _describe(typing.get_args(_split(info.annotation)[0])[0], [])
    else:
        allowed = _describe(info.annotation, info.metadata)
    return ParamsError(f"{source}: {key}={_show(e['input'])} is not allowed; allowed: {allowed}")


def _key(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# -- loading ----------------------------------------------------------------------------------------

def parse_params(raw: Any) -> Params:
    """Validate an already-parsed params mapping."""
    try:
        return Params.model_validate(raw)
    except pydantic.ValidationError as err:
        raise _one_line(err, Params, "params.yaml") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; every problem is a one-line :class:`ParamsError`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run the stage from the project root") from None
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


def json_schema() -> dict:
    """The JSON Schema of ``params.yaml`` (what ``params.schema.json`` holds)."""
    schema = Params.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description="Check a params file, or print the JSON Schema of params.yaml.")
    p.add_argument("params", nargs="?", default="params.yaml", help="the params file to check")
    p.add_argument("--schema", action="store_true", help=f"print the JSON Schema (what {SCHEMA_FILE} holds)")
    args = p.parse_args()
    if args.schema:
        print(schema_text(), end="")
        return
    try:
        load_params(args.params)
    except ParamsError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"{args.params}: ok")


if __name__ == "__main__":
    main()
