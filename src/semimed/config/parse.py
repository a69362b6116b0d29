"""The generic strict parser: a YAML mapping -> a frozen dataclass, or a one-line ConfigError.

An unknown key, a missing key, a wrong type or a value its dataclass refuses (see
`semimed.config.checks`) raises `ConfigError` whose message names the full key path, e.g.
``classification.train.optimizer: must be one of sgd, adam, adamw; got 'adamx'``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A params.yaml problem; the message names the key and what was expected."""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(tp, value, key: str):
    """Convert a YAML value to annotation `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"{key}: must be one of {', '.join(map(str, choices))}; got {value!r}"
            )
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: must be a list; got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: must be a list of {len(args)} values; got {value!r}")
        return tuple(
            _convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=False))
        )
    if dataclasses.is_dataclass(tp):
        return _parse(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false; got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer; got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: must be a number; got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string; got {value!r}")
        return value
    if tp is dict or tp is Any:
        return value
    raise TypeError(f"unsupported annotation {_type_name(tp)} for {key}")


def _parse(cls, data, key: str, overrides: dict | None = None, field_types: dict | None = None):
    """Build dataclass `cls` from mapping `data` strictly; `key` is the path for messages.

    `overrides`: fields set by the caller, not read from `data`; `field_types`: dataclasses
    that replace the annotation of some fields (a task's own data, preprocess, ... sections).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{key}: must be a mapping of keys; got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    overrides = overrides or {}
    field_types = field_types or {}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        valid = ", ".join(n for n in fields if n not in overrides)
        raise ConfigError(f"{key}.{unknown[0]}: unknown key; valid keys: {valid}")
    kwargs = dict(overrides)
    for name, f in fields.items():
        if name in overrides:
            continue
        if name not in data:
            has_default = f.default is not dataclasses.MISSING or (
                f.default_factory is not dataclasses.MISSING
            )
            if has_default:
                continue
            raise ConfigError(f"{key}.{name}: missing key")
        tp = field_types.get(name, hints[name])
        kwargs[name] = _convert(tp, data[name], f"{key}.{name}")
    try:
        return cls(**kwargs)
    except ValueError as err:  # checks: "<field>: must be ..."
        raise ConfigError(f"{key}.{err}") from None


def parse_section(cls, data, key: str):
    """Strictly build dataclass `cls` from the mapping `data` found at `key` of params.yaml."""
    return _parse(cls, data, key)


def load_params(path: str | Path = "params.yaml", sections: tuple[str, ...] = ()) -> dict:
    """Read params.yaml into a plain dict; a missing or malformed file is a one-line error.
    `sections`: the top-level keys a message should name when the file is not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found (run from the repository root)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err.__class__.__name__})") from None
    if not isinstance(data, dict):
        names = f"with sections {', '.join(sections)}" if sections else "of sections"
        raise ConfigError(f"{path}: must be a mapping {names}")
    return data
