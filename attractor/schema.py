"""Typed, frozen config dataclasses: field checks, a JSON round trip and dotted overrides.

Every config in the library (a model's, its solve's, later the trainer's and the tasks') is a
frozen dataclass whose `__post_init__` calls `check_fields(self)`, so `d="big"`, `d=128.0` or
`tied_head="no"` fail at construction with a ConfigError naming the field and the expected type,
whichever way the config was made (constructor, preset override, JSON). A leaf module: standard
library and `attractor.errors` only, so every layer may use it.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import operator
import types
import typing
from typing import Any, Literal, Union

from attractor.errors import ConfigError, check_name


def _type_name(annotation) -> str:
    """'int', 'float', 'int or None', "one of 'token', 'sample'", 'SolveConfig'."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(annotation)))
    if origin in (Union, types.UnionType):
        return " or ".join("None" if a is type(None) else _type_name(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


_NO_MATCH = object()


def _coerce(value, annotation):
    """value in the annotation's canonical Python type, or _NO_MATCH.

    int takes integers (numpy's too, as int) but not bools; float takes ints and floats (stored
    as float, so JSON round trips compare equal); bool only bools; a dataclass only instances.
    """
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return value if any(value == a and type(value) is type(a) for a in typing.get_args(annotation)) else _NO_MATCH
    if origin in (Union, types.UnionType):
        for option in typing.get_args(annotation):
            out = _coerce(value, option)
            if out is not _NO_MATCH:
                return out
        return _NO_MATCH
    if origin is tuple:  # fixed length, e.g. tuple[float, float]; JSON gives a list
        args = typing.get_args(annotation)
        if not isinstance(value, (tuple, list)) or len(value) != len(args):
            return _NO_MATCH
        items = tuple(_coerce(v, a) for v, a in zip(value, args))
        return _NO_MATCH if any(i is _NO_MATCH for i in items) else items
    if annotation is type(None):
        return value if value is None else _NO_MATCH
    if isinstance(value, bool) or (type(value).__name__ == "bool_"):  # numpy bools too
        return bool(value) if annotation is bool else _NO_MATCH
    if annotation is int:
        try:
            return operator.index(value)
        except TypeError:
            return _NO_MATCH
    if annotation is float:
        return float(value) if isinstance(value, numbers.Real) else _NO_MATCH
    if annotation is Any or annotation is object:
        return value
    return value if isinstance(value, annotation) else _NO_MATCH


def check_fields(cfg) -> None:
    """Check every field of the frozen dataclass `cfg` against its annotation, normalising ints
    given to float fields (and numpy integers) in place. Raises ConfigError naming the field."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out = _coerce(value, hints[f.name])
        if out is _NO_MATCH:
            raise ConfigError(f"{type(cfg).__name__}.{f.name}={value!r} must be {_type_name(hints[f.name])}")
        if out is not value:
            object.__setattr__(cfg, f.name, out)


def require(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless ok: the range checks of __post_init__."""
    if not ok:
        raise ConfigError(message)


def to_dict(cfg) -> dict:
    """A config as JSON-safe data: nested configs become dicts (their own `to_dict` if they
    define one, which is how solver objects get a name tag)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        elif dataclasses.is_dataclass(value):
            value = to_dict(value)
        out[f.name] = value
    return out


def from_dict(cls, data: dict):
    """Rebuild `cls` from `to_dict`'s output; unknown keys raise ConfigError with suggestions.

    Missing keys take their defaults, so configs saved before a field was added still load.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__} must be given as a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        check_name(key, names, f"{cls.__name__} key")
        nested = hints[key]
        if isinstance(value, dict) and isinstance(nested, type) and dataclasses.is_dataclass(nested):
            value = nested.from_dict(value) if hasattr(nested, "from_dict") else from_dict(nested, value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{cls.__name__}: {err}") from err


def override(cfg, key: str, value):
    """A copy of `cfg` with the field at dotted path `key` ("solve.solver.m") set to `value`.

    Each level must be a dataclass; unknown names raise ConfigError with suggestions, and the
    rebuilt configs run their own checks.
    """
    head, _, rest = key.partition(".")
    if not dataclasses.is_dataclass(cfg):
        raise ConfigError(f"cannot set {key!r} inside {type(cfg).__name__}, which has no fields")
    check_name(head, [f.name for f in dataclasses.fields(cfg)], f"config key for {type(cfg).__name__}")
    if rest:
        value = override(getattr(cfg, head), rest, value)
    try:
        return dataclasses.replace(cfg, **{head: value})
    except TypeError as err:
        raise ConfigError(f"{type(cfg).__name__}: {err}") from err


def annotation_at(cfg, key: str):
    """The type annotation of the field at dotted path `key` inside the config object `cfg`."""
    head, _, rest = key.partition(".")
    if not dataclasses.is_dataclass(cfg):
        raise ConfigError(f"cannot set {key!r} inside {type(cfg).__name__}, which has no fields")
    check_name(head, [f.name for f in dataclasses.fields(cfg)], f"config key for {type(cfg).__name__}")
    return annotation_at(getattr(cfg, head), rest) if rest else typing.get_type_hints(type(cfg))[head]


def parse_value(text: str, annotation):
    """A command-line value for a field: JSON if it parses (64, 1e-4, true, null, [0.9, 0.95],
    {"name": "anderson", "m": 3}), else the text itself ("picard", "data/corpus.txt"); a text
    field keeps its text even when it looks like a number. The field's own check follows."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if _coerce(value, annotation) is _NO_MATCH and _coerce(text, annotation) is not _NO_MATCH:
        return text
    return value
