"""One strict, typed loader for ``params.yaml``.

Every section maps to a frozen dataclass. Unknown keys, missing keys, wrong types and values out
of range stop the caller with a :class:`ParamsError` whose message is one line naming the key and
what is allowed, before any stage does any work.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from fmnist.errors import ParamsError

# The trunk's three 3x3/2 max-pools need at least 67 px (``fmnist.model.min_input_size``, checked
# by a test); kept here so that loading params does not import the model code.
MIN_INPUT_SIZE = 67


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict:
    return {"lo": lo, "hi": hi, "lo_open": lo_open}


def positive(hi: float | None = None) -> dict:
    return _range(0, hi, lo_open=True)


def at_least(lo: float, hi: float | None = None) -> dict:
    return _range(lo, hi)


@dataclass(frozen=True)
class DownloadParams:
    # Tried in order: local folders (holding the .gz or the decompressed IDX files) and URLs.
    sources: tuple[str, ...]
    timeout_s: float = field(default=30.0, metadata=positive(3600))


@dataclass(frozen=True)
class SplitParams:
    valid_size: int = field(metadata=at_least(10, 59_000))  # images held out of the 60k
    seed: int = field(metadata=at_least(0))
    train_size: int = field(default=0, metadata=at_least(0, 59_990))  # 0 = all the rest; else a stratified subset


@dataclass(frozen=True)
class ResizeParams:
    size: int = field(metadata=at_least(28, 512))
    chunk: int = field(default=4096, metadata=at_least(1))  # images resized per tensor op


@dataclass(frozen=True)
class ModelParams:
    name: Literal["AlexNetSmall", "AlexNet"]
    # "linear": a plain linear output layer (right). "notebook": ReLU + dropout on the logits, as
    # the notebook did; kept only to measure how much it costs.
    head: Literal["linear", "notebook"]
    lrn: bool  # the paper's local response normalisation after conv1 and conv2
    # Compute precision of search, train and every prediction: "bf16" (mixed precision, fp32
    # weights), "fp32", or "auto": bf16 where the CPU (AMX, AVX512-BF16) or GPU does it natively.
    precision: Literal["auto", "fp32", "bf16"]


@dataclass(frozen=True)
class GridParams:
    lr: tuple[float, ...] = field(metadata=positive(1.0))
    batch_size: tuple[int, ...] = field(metadata=at_least(1, 65_536))
    dropout: tuple[float, ...] = field(metadata=_range(0.0, 0.95))

    def combinations(self) -> list[dict[str, float | int]]:
        """The grid in ``sklearn.model_selection.ParameterGrid`` order."""
        from sklearn.model_selection import ParameterGrid

        grid = {"batch_size": list(self.batch_size), "dropout": list(self.dropout), "lr": list(self.lr)}
        return [dict(p) for p in ParameterGrid(grid)]


@dataclass(frozen=True)
class SearchParams:
    strategy: Literal["grid", "halving"]
    grid: GridParams
    epochs: int = field(metadata=at_least(1, 1000))  # per trial (for halving: in the last round)
    subset: int = field(metadata=at_least(0))  # training images per trial, 0 = the whole split
    seed: int = field(metadata=at_least(0))
    factor: int = field(default=3, metadata=at_least(2, 10))  # halving: keep 1/factor per round
    # halving: what each round gives factor times more of. samples: a trial trains afresh on a
    # stratified subset; epochs: a trial goes on from where it was in the round before.
    resource: Literal["samples", "epochs"] = "samples"
    cv: int = field(default=0, metadata=at_least(0, 20))  # 0 = score on the validation split, k >= 2 = k-fold
    n_jobs: int = field(default=1, metadata=at_least(0, 256))  # trials at once here, 0 = one per core
    threads: int = field(default=0, metadata=at_least(0, 1024))  # torch threads per trial, 0 = cores // n_jobs
    scheduler: str = ""  # a Dask scheduler address such as tcp://10.0.0.5:8786, "" = this machine

    def __post_init__(self):
        if self.cv == 1:
            raise ParamsError("params.yaml: search.cv=1 is not allowed; allowed: 0 (the validation split) "
                              "or 2 to 20 folds")


@dataclass(frozen=True)
class TrainParams:
    use_search: bool  # take lr, batch_size and dropout from search's best params
    lr: float = field(metadata=positive(1.0))
    batch_size: int = field(metadata=at_least(1, 65_536))
    dropout: float = field(metadata=_range(0.0, 0.95))
    max_epochs: int = field(metadata=at_least(1, 1000))
    patience: int = field(metadata=at_least(1, 1000))  # early stopping on valid_acc
    augment: bool  # the paper's random crop + horizontal flip
    seed: int = field(metadata=at_least(0))
    threads: int = field(default=0, metadata=at_least(0, 1024))  # torch threads, 0 = all cores
    progress_bar: bool = True


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = field(metadata=at_least(1, 65_536))
    n_misclassified: int = field(metadata=at_least(0, 400))  # most confident mistakes shown


@dataclass(frozen=True)
class TrackingParams:
    experiment: str
    registered_model: str  # "" = log the model without registering it


@dataclass(frozen=True)
class Params:
    download: DownloadParams
    split: SplitParams
    resize: ResizeParams
    model: ModelParams
    search: SearchParams
    train: TrainParams
    evaluate: EvaluateParams
    tracking: TrackingParams

    def check(self) -> None:
        """Checks that span sections."""
        smallest = MIN_INPUT_SIZE
        if self.resize.size < smallest:
            raise ParamsError(
                f"params.yaml: resize.size={self.resize.size} is too small for model.name="
                f"{self.model.name}; allowed: {smallest} or more"
            )
        n_train = self.split.train_size or 60_000 - self.split.valid_size
        if self.split.train_size > 60_000 - self.split.valid_size:
            raise ParamsError(f"params.yaml: split.train_size={self.split.train_size} is more than the "
                              f"{60_000 - self.split.valid_size} images left after validation; allowed: 0 (all) "
                              f"up to that")
        if self.search.subset > n_train:
            raise ParamsError(f"params.yaml: search.subset={self.search.subset} is larger than the training "
                              f"split ({n_train} images); allowed: 0 (all) up to {n_train}")
        for key, size in (("train.batch_size", self.train.batch_size),
                          *((f"search.grid.batch_size", b) for b in self.search.grid.batch_size)):
            if size > n_train:
                raise ParamsError(f"params.yaml: {key}={size} is larger than the {n_train} training images; "
                                  f"allowed: 1..{n_train}")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        return "a non-empty list of " + {int: "integers", float: "numbers", str: "strings"}.get(inner, _describe(inner))
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[tp]


def _bounds(meta: dict) -> str:
    lo, hi = meta.get("lo"), meta.get("hi")
    left = "" if lo is None else (f"> {lo}" if meta.get("lo_open") else f">= {lo}")
    right = "" if hi is None else f"<= {hi}"
    return " and ".join(p for p in (left, right) if p)


def _convert(key: str, value: Any, tp: Any, meta: dict) -> Any:
    origin = typing.get_origin(tp)
    bad = ParamsError(f"params.yaml: {key}={value!r} is not allowed; allowed: {_describe(tp)}"
                      + (f" {_bounds(meta)}" if _bounds(meta) else ""))
    if dataclasses.is_dataclass(tp):
        return _build(key, value, tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin is tuple:
        if not isinstance(value, list) or not value:
            raise bad
        inner = typing.get_args(tp)[0]
        return tuple(_convert(f"{key}[{i}]", v, inner, meta) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
        raise bad
    if hi is not None and value > hi:
        raise bad
    return value


def _build(prefix: str, raw: Any, cls: type) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    where = prefix or "the top level"
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: {where} must be {_describe(cls)}, got {raw!r}")
    for key in raw:
        if key not in fields:
            name = f"{prefix}.{key}" if prefix else str(key)
            kind = "key" if prefix else "section"
            raise ParamsError(f"params.yaml: unknown {kind} {name!r}; allowed: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in raw:
            if f.default is dataclasses.MISSING:
                raise ParamsError(f"params.yaml: missing key {key!r}; expected {_describe(hints[name])}")
            continue
        values[name] = _convert(key, raw[name], hints[name], dict(f.metadata))
    return cls(**values)


def parse_params(raw: Any) -> Params:
    """Validate an already-parsed params mapping."""
    params = _build("", raw, Params)
    params.check()
    return params


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
    return parse_params(raw)


def to_dict(obj: Any) -> dict:
    """A plain, YAML/JSON-friendly dict of a params dataclass (tuples become lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(obj))


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
