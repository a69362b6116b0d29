"""The rules a params field can declare beside it (``Annotated[float, Range(ge=0, lt=1)]``):
`Range`, `OneOf`, `MinLen`, `Distinct`, `Each`, `Must`, `Regex`, each a `Check` whose
``error(key, value)`` is None for a passing value, else one line ``"<key>: must ...; got
<value>"``. `semimed.config.checks` runs them.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Check", "Distinct", "Each", "MinLen", "Must", "OneOf", "Range", "Regex"]


def _show(value: Any) -> str:
    """A value as messages quote it: repr, tuples as lists (as params.yaml writes them)."""
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def _num(x: float) -> str:
    """1.0 -> '1', 0.5 -> '0.5': bounds as a person writes them."""
    return str(int(x)) if float(x).is_integer() else repr(x)


def _choice(c: Any) -> str:
    return str(c).lower() if isinstance(c, bool) else str(c)


def _tail(note: str) -> str:
    return f" ({note})" if note else ""


class Check:
    """One rule on one field's value."""

    def error(self, key: str, value: Any) -> str | None:
        """The one-line message ``"<key>: must ...; got <value>"``, or None if `value` passes."""
        raise NotImplementedError


@dataclass(frozen=True)
class Range(Check):
    """A number within bounds: ``ge``/``gt`` below (at most one), ``le``/``lt`` above (at most
    one). ``Range(ge=0, lt=1)`` -> "must be in [0, 1)"; ``Range(gt=0)`` -> "must be > 0".
    NaN and non-numbers fail. ``unit`` follows the bounds, ``note`` is added in parentheses."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    unit: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        if (self.ge is not None and self.gt is not None) or (
            self.le is not None and self.lt is not None
        ):
            raise TypeError(f"{self}: give at most one lower (ge/gt) and one upper (le/lt) bound")
        if self.ge is self.gt is self.le is self.lt is None:
            raise TypeError("Range: give at least one bound")

    def describe(self) -> str:
        lo, hi = self.lo_bound(), self.hi_bound()
        if lo and hi:
            text = f"in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
        elif lo:
            text = {"[": ">= ", "(": "> "}[lo[0]] + lo[1]
        else:
            text = {"]": "<= ", ")": "< "}[hi[0]] + hi[1]
        return text + (f" {self.unit}" if self.unit else "")

    def lo_bound(self) -> tuple[str, str] | None:
        if self.ge is not None:
            return "[", _num(self.ge)
        return None if self.gt is None else ("(", _num(self.gt))

    def hi_bound(self) -> tuple[str, str] | None:
        if self.le is not None:
            return "]", _num(self.le)
        return None if self.lt is None else (")", _num(self.lt))

    def error(self, key: str, value: Any) -> str | None:
        ok = isinstance(value, numbers.Real) and not (
            (self.ge is not None and not value >= self.ge)
            or (self.gt is not None and not value > self.gt)
            or (self.le is not None and not value <= self.le)
            or (self.lt is not None and not value < self.lt)
        )
        if ok:
            return None
        return f"{key}: must be {self.describe()}{_tail(self.note)}; got {_show(value)}"


class OneOf(Check):
    """One of the given choices; ``True`` and ``1`` are different choices."""

    def __init__(self, *choices: Any, note: str = "") -> None:
        self.choices, self.note = choices, note

    def __repr__(self) -> str:
        return f"OneOf{self.choices!r}"

    def error(self, key: str, value: Any) -> str | None:
        if any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in self.choices):
            return None
        names = ", ".join(map(_choice, self.choices))
        return f"{key}: must be one of {names}{_tail(self.note)}; got {_show(value)}"


@dataclass(frozen=True)
class MinLen(Check):
    """A list of at least ``n`` entries; ``what`` names them: ``MinLen(2, "widths")``."""

    n: int
    what: str = "items"
    note: str = ""

    def error(self, key: str, value: Any) -> str | None:
        if isinstance(value, tuple | list | dict | str) and len(value) >= self.n:
            return None
        return (
            f"{key}: must list at least {self.n} {self.what}{_tail(self.note)}; got {_show(value)}"
        )


@dataclass(frozen=True)
class Distinct(Check):
    """A list without repeats; ``what`` names one entry: ``Distinct("label")``."""

    what: str = "item"

    def error(self, key: str, value: Any) -> str | None:
        if not isinstance(value, tuple | list):
            return f"{key}: must be a list; got {_show(value)}"
        seen: list[Any] = []
        for v in value:
            if v in seen:
                return f"{key}: lists a {self.what} twice ({v!r}); got {_show(value)}"
            seen.append(v)
        return None


class Each(Check):
    """Every entry of a list passes ``checks``; messages name the entry: ``spacing[1]: ...``."""

    def __init__(self, *checks: Check) -> None:
        self.checks = checks

    def __repr__(self) -> str:
        return f"Each{self.checks!r}"

    def error(self, key: str, value: Any) -> str | None:
        if not isinstance(value, tuple | list):
            return f"{key}: must be a list; got {_show(value)}"
        for i, v in enumerate(value):
            for check in self.checks:
                if msg := check.error(f"{key}[{i}]", v):
                    return msg
        return None


@dataclass(frozen=True)
class Must(Check):
    """Any one-field rule: ``Must(pred, "be ...")`` -> "must be ...; got <value>". A predicate
    that raises TypeError, ValueError or IndexError on a malformed value counts as failing."""

    pred: Callable[[Any], bool]
    text: str

    def error(self, key: str, value: Any) -> str | None:
        try:
            ok = bool(self.pred(value))
        except (TypeError, ValueError, IndexError):
            ok = False
        return None if ok else f"{key}: must {self.text}; got {_show(value)}"


@dataclass(frozen=True)
class Regex(Check):
    """A valid regular expression with at least ``groups`` (capture groups); ``allow_empty``:
    '' passes (the feature is off)."""

    groups: int = 0
    allow_empty: bool = False
    note: str = ""

    def error(self, key: str, value: Any) -> str | None:
        if self.allow_empty and value == "":
            return None
        try:
            compiled = re.compile(value)
        except (re.error, TypeError) as err:
            return f"{key}: must be a valid regular expression ({err}); got {_show(value)}"
        if compiled.groups >= self.groups:
            return None
        return (
            f"{key}: must have at least {self.groups} capture group(s){_tail(self.note)}; "
            f"got {_show(value)}"
        )
