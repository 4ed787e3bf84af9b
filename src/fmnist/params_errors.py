"""One line per bad params value: pydantic's validation errors as ``file: key=value is not
allowed; allowed: ...``, naming the key and what it may be, read off the models themselves.

:func:`one_line` picks the first problem in the file's order (an unknown key before the values
after it), so the user fixes what comes first; :func:`describe` words what a field's type and
bounds allow (``a number > 0 and <= 1.0``); :class:`Allowed` gives it in words where they cannot.
"""

from __future__ import annotations

import math
import typing
from typing import Annotated, Any, Literal

import annotated_types
import pydantic
from pydantic import BaseModel

from fmnist.errors import ParamsError


class Allowed:
    """The "allowed: ..." text of a field whose type and bounds do not say it on their own."""

    def __init__(self, text: str):
        self.text = text


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


def describe(tp: Any, meta: list, plural: bool = False) -> str:
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
        return "a non-empty list of " + describe(inner, inner_meta, plural=True)
    if _is_model(tp):
        return "a mapping with keys " + ", ".join(_fields(tp))
    text = _NAMES[tp][plural]
    if tp is str and any(isinstance(m, annotated_types.MinLen) and m.min_length > 0 for m in meta):
        return "non-empty strings" if plural else "a non-empty string"
    bounds = _bounds(meta)
    return f"{text} {bounds}" if bounds else text


def show(value: Any) -> str:
    """A value as the user wrote it: YAML's null/true/.inf, Python's repr otherwise ('256', [1, 2])."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
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


def one_line(err: pydantic.ValidationError, root: type, source: str, top: str = "key") -> ParamsError:
    """The first of pydantic's errors, in the file's order, as one line naming ``source`` and the key.
    ``top``: what a key of ``root`` itself is called in the message (``section`` for ``params.yaml``)."""
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
        what = top if len(loc) == 1 else "key"
        holder = _walk(root, loc[:-1])[3]
        return ParamsError(f"{source}: unknown {what} {key!r}; allowed: {', '.join(_fields(holder))}")
    if kind == "missing":
        return ParamsError(f"{source}: missing key {key!r}; expected {describe(info.annotation, info.metadata)}")
    if kind in ("model_type", "model_attributes_type", "dataclass_type"):
        where = key or "the top level"
        return ParamsError(f"{source}: {where} must be {describe(here, [])}, got {show(e['input'])}")
    if info is None:  # not a shape this file has: pydantic's own words, still one line
        return ParamsError(f"{source}: {key or 'the top level'}: {e['msg']}")
    if kind == "params_allowed":
        allowed = e["ctx"]["allowed"]
    elif isinstance(loc[-1], int):  # an element of a list
        allowed = describe(typing.get_args(_split(info.annotation)[0])[0], [])
    else:
        allowed = describe(info.annotation, info.metadata)
    return ParamsError(f"{source}: {key}={show(e['input'])} is not allowed; allowed: {allowed}")


def _key(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
