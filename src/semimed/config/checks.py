"""Declarative value checks for params dataclasses: each field declares its rule beside it.

    @dataclass(frozen=True)
    class Params(Checked):
        ema_decay: Annotated[float, Range(ge=0, lt=1)] = 0.999  # EMA decay per step
        distance: Annotated[str, OneOf("mse", "kl")] = "mse"  # distance of the soft term
        sizes: Annotated[tuple[int, ...], MinLen(1, "size"), Each(Range(ge=16))] = (96,)

        def cross_checks(self) -> None:  # rules between fields, which one field cannot state
            require(self.warmup < self.steps, "warmup", f"must be < steps ({self.steps})")

``Checked.__post_init__`` runs ``validate``: each field's checks in declaration order, then
``cross_checks``. The first failure raises ``ValueError`` with ONE line that names the field,
the rule and the value, e.g. ``ema_decay: must be in [0, 1); got 1.5``; the config parser
prefixes the key path (``params.yaml: classification.methods_params.fixmatch.ema_decay: ...``).

* Checks skip ``None`` in a field whose type allows it (``tuple[int, int] | None``: off).
* A subclass that redeclares a field without checks (to change its default) keeps the checks
  of the nearest base that declares them; redeclaring it with checks replaces them.
* ``cross_checks`` is an ordinary method: a subclass that adds rules calls
  ``super().cross_checks()``; a subclass with its own ``__post_init__`` calls
  ``super().__post_init__()``.
* Names used in annotations must be importable from the module (``from __future__ import
  annotations`` makes them strings, resolved on the class's first validation).

The rules themselves live in `semimed.config.rules`; this module runs them and exports them
with `Checked`, so a params module imports everything from here.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any

from semimed.config.rules import Check, Distinct, Each, MinLen, Must, OneOf, Range, Regex

__all__ = [
    "Check",
    "Checked",
    "Each",
    "Distinct",
    "MinLen",
    "Must",
    "OneOf",
    "Range",
    "Regex",
    "require",
    "validate",
]


def require(ok: bool, key: str, text: str) -> None:
    """For ``cross_checks``: raise ``ValueError("<key>: <text>")`` unless `ok`."""
    if not ok:
        raise ValueError(f"{key}: {text}")


def _own_checks(hint: Any) -> tuple[Check, ...]:
    """Checks in ``Annotated[...]`` metadata, also inside ``Annotated[...] | None``."""
    found = tuple(m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Check))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            found += _own_checks(arg)
    return found


@functools.cache
def _hints(klass: type) -> dict[str, Any]:
    return typing.get_type_hints(klass, include_extras=True)


def _allows_none(hint: Any) -> bool:
    if typing.get_origin(hint) is typing.Annotated:
        return _allows_none(typing.get_args(hint)[0])
    return hint is Any or type(None) in typing.get_args(hint)


@functools.cache
def field_checks(cls: type) -> tuple[tuple[str, bool, tuple[Check, ...]], ...]:
    """``(field, None allowed, checks)`` of dataclass `cls` in declaration order; a field
    redeclared without checks keeps those of the nearest base class that declares some."""
    table = []
    for f in dataclasses.fields(cls):
        checks: tuple[Check, ...] = ()
        for klass in cls.__mro__:
            if f.name in vars(klass).get("__annotations__", {}):
                checks = _own_checks(_hints(klass)[f.name])
                if checks:
                    break
        table.append((f.name, _allows_none(_hints(cls)[f.name]), checks))
    return tuple(table)


def validate(obj: Any) -> None:
    """Run every field's checks of dataclass instance `obj`, then its ``cross_checks``."""
    for name, allows_none, checks in field_checks(type(obj)):
        value = getattr(obj, name)
        if value is None and allows_none:
            continue
        for check in checks:
            if msg := check.error(name, value):
                raise ValueError(msg)
    cross = getattr(obj, "cross_checks", None)
    if cross is not None:
        cross()


class Checked:
    """Base of a params dataclass whose fields declare their checks (see the module doc)."""

    def __post_init__(self) -> None:
        validate(self)

    def cross_checks(self) -> None:
        """Rules between fields (``require(...)``); none by default."""
